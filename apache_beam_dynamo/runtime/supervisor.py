"""The per-machine stack supervisor: ``python -m apache_beam_dynamo.runtime.supervisor``.

The first SDK process that needs a stack starts this program (in a session
of its own) and writes ``{"address": socket, "config": StackConfig JSON}``
to its stdin. The supervisor owns
the stack's processes: it starts them, watches them (a watchdog probes every
component each ``liveness_interval_s``), restarts what fails within the
restart budget, and serves leases on an abstract Unix socket. Every SDK
process of the machine that uses the same config holds one lease. When the
last lease is released (or its holder dies), the supervisor stops the stack
and exits; the next user starts a fresh one. If the supervisor itself dies,
its reaper kills the stack's process groups.

Only light stdlib-based modules are imported here: this program is on the
critical path of the stack's startup.
"""

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Optional

from apache_beam_dynamo.runtime import protocol
from apache_beam_dynamo.config.stack import StackConfig

from apache_beam_dynamo.errors import ComponentFailure, NoFreePortError
from apache_beam_dynamo.runtime.lease_server import LeaseServer, ForwardToLeases
from apache_beam_dynamo.runtime.protocol import StackState
from apache_beam_dynamo.runtime.restart_policy import RestartBudget
from apache_beam_dynamo.serving.components import port_conflict
from apache_beam_dynamo.serving.stack_metrics import Sampler
from apache_beam_dynamo.serving.stacks import Stack, build_stack

_LOGGER = logging.getLogger('apache_beam_dynamo.runtime.supervisor')

# A supervisor nobody connects to (its starter died first) gives up after this.
FIRST_LEASE_TIMEOUT_S = 60.0
_PORT_CONFLICT_RETRIES = 3
# The stack's Prometheus pages are sampled every this many liveness intervals.
METRICS_EVERY_INTERVALS = 5


class _Cancelled(Exception):
  pass


class Supervisor:
  """Runs one stack on a thread of its own and keeps it healthy.

  All stack operations happen on that thread; other threads only ask
  (``check_now``, ``stop``).
  """
  def __init__(
      self,
      config: StackConfig,
      publish: Callable[[StackState], None],
      stack: Stack):
    self._config = config
    self._publish_state = publish
    self._stack = stack
    self._wake = threading.Event()
    self._stopping = threading.Event()
    self._stopped = threading.Event()
    self._checks_lock = threading.Lock()
    self._pending_checks: list[threading.Event] = []
    self._budget = RestartBudget(config.max_restarts, config.restart_window_s)
    self._stop_grace_s: Optional[float] = None
    self._state = StackState(
        protocol.STARTING, supervisor_pid=os.getpid(), policy=config.policy())
    self._sampler = Sampler(stack.metrics_urls)
    self._thread = threading.Thread(
        target=self._run, name='abd-supervisor', daemon=True)

  @property
  def state(self) -> StackState:
    return self._state

  def start(self) -> None:
    self._thread.start()

  def check_now(self, timeout_s: float) -> None:
    """Runs a liveness pass right away; returns once it is done."""
    done = threading.Event()
    with self._checks_lock:
      self._pending_checks.append(done)
    self._wake.set()
    done.wait(timeout_s)

  def stop(self, grace_s: Optional[float] = None) -> None:
    """Stops the stack (from any thread) and waits until it is down.

    ``grace_s`` overrides the SIGTERM-to-SIGKILL delay.
    """
    self._stop_grace_s = grace_s
    self._stopping.set()
    self._wake.set()
    if self._thread.is_alive():
      self._thread.join()
    else:
      self._shutdown()

  # -- the supervisor thread ---------------------------------------------------

  def _publish(self, **changes) -> None:
    self._state = StackState(**{**self._state.__dict__, **changes})
    self._publish_state(self._state)

  def _run(self) -> None:
    try:
      self._start_stack()
      self._stack.after_ready()  # the ledger says running before leases hear
      self._publish(
          phase=protocol.READY,
          base_url=self._stack.base_url,
          model=self._stack.served_model_name,
          engines=self._stack.engine_count,
          max_num_seqs=self._stack.max_num_seqs,
          pids=self._stack.pids(),
          generation=1)
      next_sample = time.monotonic()
      while not self._stopping.is_set():
        self._wake.wait(self._config.liveness_interval_s)
        self._wake.clear()
        if self._stopping.is_set():
          break
        failure = self._stack.first_failure()
        if failure is not None:
          self._recover(failure)
        self._finish_checks()
        if time.monotonic() >= next_sample:
          next_sample = time.monotonic() + (
              METRICS_EVERY_INTERVALS * self._config.liveness_interval_s)
          self._sample_metrics()
    except _Cancelled:
      pass
    except ComponentFailure as failure:
      _LOGGER.error('The stack failed for good: %s', failure)
      self._publish(phase=protocol.FAILED, error=str(failure))
    except Exception as e:  # pylint: disable=broad-except
      _LOGGER.exception('Supervisor error')
      self._publish(phase=protocol.FAILED, error=f'supervisor error: {e!r}')
    finally:
      self._finish_checks()
      self._shutdown()

  def _sample_metrics(self) -> None:
    metrics = self._sampler.sample()
    if metrics and not self._stopping.is_set():
      self._publish(metrics=metrics)

  def _shutdown(self) -> None:
    if not self._stopped.is_set():
      self._stopped.set()
      self._stack.stop(self._stop_grace_s)
      if self._state.phase != protocol.FAILED:
        self._publish(phase=protocol.STOPPED)

  def _finish_checks(self) -> None:
    with self._checks_lock:
      pending, self._pending_checks = self._pending_checks, []
    for done in pending:
      done.set()

  def _cancelled(self) -> bool:
    return self._stopping.is_set()

  def _start_stack(self) -> None:
    """The first start. A port lost to a race is retried on new ports; any
    other failure is final: it is a configuration or installation problem,
    and the error says which."""
    for attempt in range(_PORT_CONFLICT_RETRIES + 1):
      try:
        if attempt == 0:
          self._stack.start()
        else:
          self._stack.stop()
          self._stack.start()
        self._wait_ready()
        return
      except ComponentFailure as failure:
        if self._cancelled():
          raise _Cancelled() from failure
        if not port_conflict(failure) or attempt == _PORT_CONFLICT_RETRIES:
          raise
        _LOGGER.warning('Port conflict at start, retrying: %s', failure.reason)
      except NoFreePortError as e:
        raise ComponentFailure('stack', str(e)) from e

  def _wait_ready(self) -> None:
    try:
      self._stack.wait_ready(self._config.startup_timeout_s, self._cancelled)
    except ComponentFailure as failure:
      if self._cancelled():
        raise _Cancelled() from failure
      raise

  def _recover(self, failure: ComponentFailure) -> None:
    """Restarts until the stack is ready again, within the restart budget."""
    detected = time.monotonic()
    first = failure.component
    while failure is not None:
      backoff = self._budget.spend()
      if backoff is None:
        raise ComponentFailure(
            failure.component,
            f'{failure.reason}; giving up after {self._budget.used} '
            f'restarts in {self._config.restart_window_s:.0f} s',
            exit_code=failure.exit_code,
            log_tail=failure.log_tail,
            first_error=failure.first_error,
            remedy='See the log below; raise max_restarts if failures are '
            'expected.')
      _LOGGER.warning(
          'Restarting %s (restart %d): %s',
          failure.component,
          self._state.restarts + 1,
          failure)
      # While other engines serve, clients keep going; otherwise they wait.
      serving = self._stack.engines_alive_besides(failure.component)
      self._publish(
          phase=protocol.READY if serving else protocol.RECOVERING,
          restarts=self._state.restarts + 1,
          last_failure=first,
          error=str(failure))
      self._finish_checks()
      if self._stopping.wait(backoff):
        raise _Cancelled()
      try:
        self._stack.restart(failure.component)
        self._wait_ready()
        failure = None
      except ComponentFailure as again:
        if self._cancelled():
          raise _Cancelled() from again
        failure = again
    self._stack.after_ready()
    recovery_s = round(time.monotonic() - detected, 2)
    self._publish(
        phase=protocol.READY,
        base_url=self._stack.base_url,
        pids=self._stack.pids(),
        generation=self._state.generation + 1,
        error=None,
        last_recovery_s=recovery_s)
    _LOGGER.warning(
        'Recovered from the %s failure in %.1f s (generation %d).', first,
        recovery_s, self._state.generation)


def main() -> int:
  request = json.loads(sys.stdin.read())
  config = StackConfig.from_json(request['config'])
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  try:
    listener.bind(request['address'])
  except OSError:
    return protocol.EXIT_ALREADY_RUNNING
  listener.listen(64)

  server = LeaseServer(listener)
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  root.addHandler(ForwardToLeases(server))

  def forward_child_line(component: str, level: int, line: str) -> None:
    server.publish_log(f'apache_beam_dynamo.{component}', level, line)

  supervisor = Supervisor(
      config, server.publish_state, build_stack(config, forward_child_line))
  server.supervisor = supervisor
  signal.signal(signal.SIGTERM, lambda *_: server.unused.set())
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  server.serve()
  supervisor.start()
  server.wait_until_unused(FIRST_LEASE_TIMEOUT_S)
  server.shut_down()  # the stack first, then the listener
  return 0


if __name__ == '__main__':
  sys.exit(main())
