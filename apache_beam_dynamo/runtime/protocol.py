"""What a stack's supervisor and its users say to each other.

One supervisor per (user id, sharing scope, stack config) and machine
listens on a Linux abstract Unix socket named after the config's
fingerprint, so that every SDK process with the same handler config finds
the same stack and none leaves a socket file behind. Processes whose
``APACHE_BEAM_DYNAMO_SCOPE`` differ never share a stack (independent jobs on
one host, or test runs side by side). A connection is a lease: the stack lives while one is
open. Messages are JSON objects, one per line.

supervisor -> user: ``{"type": "state", ...StackState}``,
``{"type": "log", "logger", "level", "message"}``, ``{"type": "checked",
"id"}``, ``{"type": "released"}``.
user -> supervisor: ``{"op": "check", "id"}`` (probe now),
``{"op": "release", "linger": bool}``.
"""

import dataclasses
import json
import os
import socket
from typing import Mapping, Optional

from apache_beam_dynamo.errors import DynamoHandlerError

SCOPE_ENV = 'APACHE_BEAM_DYNAMO_SCOPE'
_MAX_SCOPE_CHARS = 48

# Exit code of a supervisor that found another one already serving its config.
EXIT_ALREADY_RUNNING = 3

STARTING = 'starting'
READY = 'ready'
RECOVERING = 'recovering'
FAILED = 'failed'
STOPPED = 'stopped'


@dataclasses.dataclass(frozen=True)
class StackState:
  """The supervisor's view of the stack, pushed to every user on change.

  ``generation`` counts the times the stack became ready; ``restarts``
  counts restarts after failures; ``last_recovery_s`` is how long the last
  recovery took, from detecting the failure to ready again; ``engines`` is
  how many engines serve the model, ``max_num_seqs`` each one's
  ``--max-num-seqs`` when a flag sets it (None: the engine's default).
  ``pids`` maps each running component (``etcd``, ``frontend``,
  ``engine``...) to its process id, ``supervisor_pid`` is the supervisor's,
  and ``last_failure`` names the component whose failure caused the last
  restart: what an operator (or a fault test) needs to find a process.
  ``metrics`` is the last sample of the stack's own Prometheus metrics
  (serving/stack_metrics.py; empty until the first one).
  ``policy`` is the supervision policy in force (StackConfig.policy() of the
  lease that started the stack).
  """
  phase: str
  base_url: Optional[str] = None
  model: Optional[str] = None
  generation: int = 0
  restarts: int = 0
  error: Optional[str] = None
  last_recovery_s: Optional[float] = None
  engines: int = 1
  max_num_seqs: Optional[int] = None
  pids: dict[str, int] = dataclasses.field(default_factory=dict)
  supervisor_pid: Optional[int] = None
  last_failure: Optional[str] = None
  metrics: dict[str, int] = dataclasses.field(default_factory=dict)
  policy: dict[str, float] = dataclasses.field(default_factory=dict)


def sharing_scope(environ: Mapping[str, str]) -> str:
  """The ``APACHE_BEAM_DYNAMO_SCOPE`` of a process ('' when unset)."""
  scope = environ.get(SCOPE_ENV, '')
  if len(scope) > _MAX_SCOPE_CHARS or not all(
      c.isalnum() or c in '-_.' for c in scope):
    raise DynamoHandlerError(
        f'{SCOPE_ENV}={scope!r} must be at most {_MAX_SCOPE_CHARS} letters, '
        "digits, '-', '_' or '.'.")
  return scope


def socket_address(fingerprint: str, scope: str = '') -> str:
  suffix = f'-{scope}' if scope else ''
  return f'\0apache_beam_dynamo-{os.getuid()}-{fingerprint}{suffix}'


def encode(message: dict) -> bytes:
  return (json.dumps(message) + '\n').encode()


def state_message(state: StackState) -> dict:
  return {'type': 'state', **dataclasses.asdict(state)}


def state_from(message: dict) -> StackState:
  fields = {f.name for f in dataclasses.fields(StackState)}
  return StackState(**{k: v for k, v in message.items() if k in fields})


def read_messages(sock: socket.socket):
  """Yields decoded messages until the peer closes the connection."""
  with sock.makefile('rb') as stream:
    for line in stream:
      yield json.loads(line)
