"""One component of a stack (etcd, frontend, an engine, vLLM's server):
how to launch it, how to probe it, and how its liveness is judged."""

import dataclasses
from typing import Callable, Optional

from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.processes.launch import Launch
from apache_beam_dynamo.processes.process import LineSink, ManagedProcess
from apache_beam_dynamo.processes.reaper import Reaper

# Consecutive failed probes (one per liveness interval) before a running
# component counts as hung and is restarted.
UNRESPONSIVE_PROBES = 3
# How long the frontend may go without listing the engine's model before the
# engine is restarted. The frontend drops a worker for a few seconds after a
# request fails inside it, then lists it again: that is not a failure.
UNREGISTERED_GRACE_S = 60.0
_ADDRESS_IN_USE = ('address already in use', 'addrinuse', 'address in use')


def port_conflict(failure: ComponentFailure) -> bool:
  """Whether a component failed because a port was taken meanwhile."""
  text = '\n'.join(failure.first_error + failure.log_tail).lower()
  return any(marker in text for marker in _ADDRESS_IN_USE)


@dataclasses.dataclass
class Component:
  """A stack component and, while it runs, its process.

  Attributes:
    name: ``etcd``, ``frontend``, ``engine`` / ``engine-N``, ``vllm-server``.
    build: the launch (argv and environment) for the current placement.
    probe: True while the process answers (its health route, or any reply).
    ports: the loopback ports it listens on (checked before a restart).
    registered: for an engine, whether the frontend lists its model.
  """
  name: str
  build: Callable[[], Launch]
  probe: Callable[[], bool]
  ports: Callable[[], list[int]]
  registered: Optional[Callable[[], bool]] = None
  process: Optional[ManagedProcess] = None
  _failed_probes: int = 0
  _unregistered_since: Optional[float] = None

  @property
  def is_engine(self) -> bool:
    return self.name.startswith('engine')

  @property
  def uses_gpu(self) -> bool:
    """A vLLM engine, Dynamo's or vLLM's own server: its start measures the
    GPU's free memory."""
    return self.is_engine or self.name == 'vllm-server'

  def launch(self, on_line: LineSink, reaper: Reaper) -> None:
    self.process = ManagedProcess(self.build(), on_line)
    self._failed_probes = 0
    self._unregistered_since = None
    reaper.watch_group(self.process.pgid)

  def stop(self, grace_s: float, reaper: Reaper) -> None:
    """SIGTERM its process group, SIGKILL after ``grace_s``; no-op if down."""
    if self.process is None:
      return
    self.process.stop(grace_s)
    reaper.forget_group(self.process.pgid)
    self.process = None

  def alive(self) -> bool:
    return self.process is not None and self.process.alive()

  def failure(self, now: float) -> Optional[ComponentFailure]:
    """None while it runs, answers its probe and (engine) is registered.

    A component that answers no probe UNRESPONSIVE_PROBES times in a row (it
    hangs, or was stopped with SIGSTOP) has failed; so has an engine whose
    model the frontend has not listed for UNREGISTERED_GRACE_S.
    """
    if not self.process.alive():
      return self.process.failure('exited unexpectedly')
    if self.probe():
      self._failed_probes = 0
    else:
      self._failed_probes += 1
      if self._failed_probes >= UNRESPONSIVE_PROBES:
        return self.process.failure(
            f'stopped answering its health probe '
            f'({self._failed_probes} probes in a row)')
    if self.registered is None or self.registered():
      self._unregistered_since = None
    elif self._unregistered_since is None:
      self._unregistered_since = now
    elif now - self._unregistered_since > UNREGISTERED_GRACE_S:
      return self.process.failure(
          f'its model has not been listed by the frontend for '
          f'{UNREGISTERED_GRACE_S:.0f} s')
    return None
