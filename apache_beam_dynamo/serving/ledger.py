"""The machine's GPU ledger: which stack holds which GPUs, and how much.

Every stack with engines on GPUs records, before it launches anything, the
GPUs it holds and the share of each GPU's memory its engines take (vLLM's
``--gpu-memory-utilization``). A stack whose share would push any of its
GPUs over 1.0 fails at once, naming the stack already there and the remedy,
instead of an out-of-memory error a minute later. A stopping stack keeps its
entry (marked ``stopping``) until its processes are gone; a newcomer whose
only conflicts are stopping stacks waits for them, bounded.

Start-ups and stops on one GPU take turns. vLLM sizes its KV cache from the
GPU's free memory during its start-up and fails ("Error in memory
profiling") when another process frees memory meanwhile; what another
process allocates meanwhile it may count as its own. So a stack is
``starting`` from its claim until ready, and again while its engines
restart; a newcomer or a restart waits while another stack on its
GPUs is starting or stopping, and a stack about to stop waits while
another one on its GPUs is starting (all bounded, then a WARNING and on).

The ledger is a JSON file in a per-user directory of the temp dir, so every
SDK process of the machine and user sees it; a lock file (``fcntl.flock``)
guards it and it is replaced atomically. Entries carry their supervisor's
pid (and its start time): entries of dead processes are pruned.
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import time
from typing import Callable, Iterator, Optional

from apache_beam_dynamo.config.server_args import ServerArgs
from apache_beam_dynamo.errors import ComponentFailure

_LOGGER = logging.getLogger(__name__)

# vLLM 0.26's --gpu-memory-utilization default.
VLLM_DEFAULT_SHARE = 0.92
# How long a newcomer waits for stopping stacks to free its GPUs.
WAIT_FOR_STOPPING_S = 60.0
# How long a start or a stop waits for the other stacks on its GPUs to
# settle (a cold vLLM start takes 2 minutes on an H200, more on a T4).
SETTLE_WAIT_S = 600.0
POLL_S = 0.1
STARTING = 'starting'
RUNNING = 'running'
STOPPING = 'stopping'
_EPSILON = 1e-9

REMEDY = (
    "Give each handler its share with 'gpu-memory-utilization' in "
    'vllm_server_kwargs (the shares on one GPU must add up to at most 1.0, '
    "e.g. {'gpu-memory-utilization': '0.45'} for two handlers), or separate "
    'them with gpus=[...].')


def memory_share(engine_args: ServerArgs) -> float:
  """The GPU memory share of an engine given these flags (GPU defaults
  already merged in): its --gpu-memory-utilization, else vLLM's default."""
  value = dict(engine_args).get('gpu-memory-utilization')
  try:
    share = float(value) if value is not None else VLLM_DEFAULT_SHARE
  except ValueError:
    return VLLM_DEFAULT_SHARE
  return share if 0 < share <= 1 else VLLM_DEFAULT_SHARE


def _process_start(pid: int) -> Optional[int]:
  """The process's start time in clock ticks (guards against pid reuse)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive(pid: int, started: Optional[int]) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return started is None or _process_start(pid) in (None, started)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One stack's hold on GPUs."""
  model: str
  gpus: tuple[int, ...]
  share: float
  pid: int
  started: Optional[int] = None
  state: str = STARTING
  # How many times its engines started: 1, plus one per restart.
  starts: int = 1

  def describe(self) -> str:
    return (f'the stack for {self.model!r} (GPUs {list(self.gpus)}, '
            f'gpu-memory-utilization {self.share:g}, supervisor pid '
            f'{self.pid}{", stopping" if self.state == STOPPING else ""})')

  def shares_a_gpu(self, other: 'Entry') -> bool:
    return bool(set(self.gpus) & set(other.gpus))


def default_path() -> str:
  """``<temp dir>/abd-gpu-ledger-<uid>/gpus.json``."""
  return os.path.join(tempfile.gettempdir(), f'abd-gpu-ledger-{os.getuid()}',
                      'gpus.json')


class Ledger:
  """The GPU ledger file at ``path``."""
  def __init__(self, path: Optional[str] = None,
               wait_s: float = WAIT_FOR_STOPPING_S,
               settle_s: float = SETTLE_WAIT_S, poll_s: float = POLL_S):
    self.path = path or default_path()
    self.wait_s = wait_s
    self.settle_s = settle_s
    self.poll_s = poll_s

  @contextlib.contextmanager
  def _locked(self) -> Iterator[dict[str, Entry]]:
    """The live entries, under the lock; what the caller leaves in the dict
    is written back."""
    directory = os.path.dirname(self.path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(self.path + '.lock', os.O_RDWR | os.O_CREAT, 0o600)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      entries = self._read()
      live = {k: e for k, e in entries.items() if _alive(e.pid, e.started)}
      yield live
      self._write(live)
    finally:
      os.close(fd)  # releases the lock

  def _read(self) -> dict[str, Entry]:
    try:
      with open(self.path) as f:
        raw = json.load(f)
      return {
          key: Entry(**{**value, 'gpus': tuple(value['gpus'])})
          for key, value in raw.items()
      }
    except FileNotFoundError:
      return {}
    except (OSError, ValueError, TypeError, KeyError) as e:
      _LOGGER.warning('Ignoring an unreadable GPU ledger %s: %s', self.path, e)
      return {}

  def _write(self, entries: dict[str, Entry]) -> None:
    temporary = f'{self.path}.{os.getpid()}.tmp'
    with open(temporary, 'w') as f:
      json.dump({k: dataclasses.asdict(e) for k, e in entries.items()}, f)
    os.replace(temporary, self.path)

  def entries(self) -> dict[str, Entry]:
    """The live entries (dead ones pruned)."""
    with self._locked() as entries:
      return dict(entries)

  def claim(self, key: str, model: str, gpus: tuple[int, ...], share: float,
            cancelled: Callable[[], bool] = lambda: False) -> None:
    """Records ``key``'s hold on ``gpus`` at ``share`` for this process, as
    ``starting`` (mark_running() once the stack is ready).

    Raises ComponentFailure at once when a running or starting stack leaves
    no room; waits up to ``wait_s`` when only stopping stacks are in the
    way, and up to ``settle_s`` while another stack on these GPUs starts or
    stops.
    """
    pid = os.getpid()
    entry = Entry(model, tuple(gpus), share, pid, _process_start(pid))
    began = time.monotonic()
    waited = False
    while True:
      with self._locked() as entries:
        entries.pop(key, None)
        gpu, total, conflicts = _overfull(entry, entries.values())
        if conflicts:
          if (any(c.state != STOPPING for c in conflicts) or
              time.monotonic() > began + self.wait_s or cancelled()):
            raise _no_room(entry, gpu, total, conflicts,
                           self.wait_s if waited else None)
          busy = conflicts
        else:
          busy = _others_on_its_gpus(entries, key, entry, (STARTING, STOPPING))
          if not busy or self._settled_late(began, busy, 'starting'):
            entries[key] = entry
            return
      if not waited:
        _LOGGER.info('Waiting for %s to finish %s before starting on GPUs %s.',
                     ' and '.join(b.describe() for b in busy),
                     'stopping' if conflicts else 'starting or stopping',
                     list(gpus))
        waited = True
      self._pause()

  def mark_running(self, key: str) -> None:
    """The stack is ready: others may start or stop beside it."""
    self._take_turn(key, RUNNING, (), 'running')

  def mark_restarting(self, key: str) -> None:
    """The stack's engines start again: waits (bounded) while another stack
    on its GPUs starts or stops, then counts as starting."""
    self._take_turn(key, STARTING, (STARTING, STOPPING), 'restarting')

  def mark_stopping(self, key: str) -> None:
    """The stack is stopping: it still holds its GPUs until release().
    Waits (bounded) while another stack on its GPUs is starting."""
    self._take_turn(key, STOPPING, (STARTING, ), 'stopping')

  def _take_turn(self, key: str, state: str, wait_while: tuple[str, ...],
                 what: str) -> None:
    """Sets ``key``'s state once no other stack on its GPUs is in one of
    ``wait_while`` (or settle_s has passed)."""
    began = time.monotonic()
    logged = False
    while True:
      with self._locked() as entries:
        entry = entries.get(key)
        if entry is None:
          return
        busy = _others_on_its_gpus(entries, key, entry, wait_while)
        if not busy or self._settled_late(began, busy, what):
          entries[key] = dataclasses.replace(
              entry, state=state,
              starts=entry.starts + (state == STARTING))
          return
      if not logged:
        _LOGGER.info('Waiting for %s to settle before %s.',
                     ' and '.join(e.describe() for e in busy), what)
        logged = True
      self._pause()

  def _settled_late(self, began: float, busy: list[Entry], what: str) -> bool:
    """True (with a WARNING) once ``settle_s`` has passed."""
    if time.monotonic() - began <= self.settle_s:
      return False
    _LOGGER.warning(
        '%s still starting or stopping after %.0f s; %s anyway (vLLM may '
        'then misjudge the free GPU memory).',
        ' and '.join(b.describe() for b in busy), self.settle_s, what)
    return True

  def _pause(self) -> None:
    time.sleep(self.poll_s)

  def release(self, key: str) -> None:
    """The stack's processes are gone: its GPUs are free."""
    with self._locked() as entries:
      entries.pop(key, None)


def _overfull(entry: Entry, others) -> tuple[int, float, list[Entry]]:
  """The first of ``entry``'s GPUs the others leave no room on: (GPU, the
  share it would reach, the entries on it); ``[]`` when all fit."""
  for gpu in entry.gpus:
    on_gpu = [e for e in others if gpu in e.gpus]
    total = entry.share + sum(e.share for e in on_gpu)
    if total > 1.0 + _EPSILON:
      return gpu, total, on_gpu
  return -1, 0.0, []


def _others_on_its_gpus(entries: dict[str, Entry], key: str, entry: Entry,
                        states: tuple[str, ...]) -> list[Entry]:
  """The other stacks (not ``key``) in one of ``states`` on ``entry``'s
  GPUs."""
  return [e for k, e in entries.items()
          if k != key and e.state in states and e.shares_a_gpu(entry)]


def _no_room(entry: Entry, gpu: int, total: float, conflicts: list[Entry],
             waited_s: Optional[float]) -> ComponentFailure:
  held = ' and '.join(c.describe() for c in conflicts)
  waited = (f' (still there after waiting {waited_s:.0f} s for it to stop)'
            if waited_s is not None else '')
  return ComponentFailure(
      'gpu',
      f'no room on GPU {gpu} for the stack for {entry.model!r} (GPUs '
      f'{list(entry.gpus)}, gpu-memory-utilization {entry.share:g}): {held} '
      f'already holds it{waited}; together they would take {total:.2f} of '
      'its memory (at most 1.0)',
      remedy=REMEDY)
