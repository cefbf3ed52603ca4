"""The handler's view of the machine's stack: a lease held by this process.

``Lease`` connects to the stack supervisor for its config, starting the
supervisor if none runs yet, and mirrors the supervisor's state. It is what
``load_model`` returns. The process's registry (registry.py) gives every
handler copy of a config the same ``Lease``, so the stack stops when the
last pipeline using it, in every process of the machine, is gone.
"""

import itertools
import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

from apache_beam_dynamo.runtime import protocol
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import StackStartupError, StackUnavailableError
from apache_beam_dynamo.runtime.protocol import StackState

_LOGGER = logging.getLogger(__name__)

SUPERVISOR_START_TIMEOUT_S = 60.0
# How much longer a user waits than the supervisor's own startup deadline.
_WAIT_MARGIN_S = 60.0


class Lease:
  """A lease on the stack for one config: start, wait_ready, check, stop;
  its ``state`` mirrors the supervisor's."""
  def __init__(self, config: StackConfig, address: str):
    self.config = config
    self.address = address
    self._cond = threading.Condition()
    self._state: Optional[StackState] = None
    self._sock: Optional[socket.socket] = None
    self._send_lock = threading.Lock()
    self._connect_lock = threading.Lock()
    self._check_ids = itertools.count()
    self._checks: dict[int, threading.Event] = {}
    self._supervisor_losses = 0
    self._closed = False
    self._listeners: list[Callable[[StackState], None]] = []
    # The supervision policies this process's handlers of the stack asked
    # for, and the differences from the policy in force already logged.
    self._policies: list[dict[str, float]] = [config.policy()]
    self._warned: set[tuple[str, float]] = set()
    self.last_used = time.monotonic()

  # -- the interface ---------------------------------------------------------

  def start(self) -> None:
    """Connects to the supervisor for this config, starting one if needed."""
    with self._connect_lock:
      if self._sock is None and not self._closed:
        self._connect()

  def request(self, config: StackConfig) -> None:
    """Another handler of this process uses this stack with ``config`` (the
    same identity): a supervision policy that differs from the one in force
    is logged once, as a warning."""
    with self._cond:
      policy = config.policy()
      if policy not in self._policies:
        self._policies.append(policy)
      state = self._state
    if state is not None:
      self._warn_about_policies(state)

  def in_force(self, name: str) -> float:
    """A supervision policy value as the stack runs it (the value of the
    lease that started it), or this lease's until the stack said."""
    state = self._state
    if state is not None and name in state.policy:
      return state.policy[name]
    return getattr(self.config, name)

  def wait_ready(self, timeout_s: Optional[float] = None) -> StackState:
    """Blocks until the stack serves requests and returns its state.

    Raises StackStartupError if it never became ready, StackUnavailableError
    if it failed for good after being ready. The default timeout is the
    stack's startup_timeout_s in force plus a margin.
    """
    self.last_used = time.monotonic()
    started = time.monotonic()
    while True:
      if timeout_s is None:
        deadline = started + self.in_force('startup_timeout_s') + _WAIT_MARGIN_S
      else:
        deadline = started + timeout_s
      with self._cond:
        state, connected = self._state, self._sock is not None
        if connected and state is not None:
          if state.phase == protocol.READY:
            return state
          if state.phase == protocol.FAILED:
            error = StackStartupError if state.generation == 0 else (
                StackUnavailableError)
            raise error(f'The {self._describe()} failed: {state.error}')
        left = deadline - time.monotonic()
        if left <= 0:
          raise StackStartupError(
              f'The {self._describe()} was not ready within '
              f'{deadline - started:.0f} s '
              f'(state: {state.phase if state else "no supervisor"}).')
        if connected and (state is None or state.phase != protocol.STOPPED):
          self._cond.wait(min(left, 1.0))
          continue
      self._reconnect()

  @property
  def state(self) -> Optional[StackState]:
    return self._state

  def add_listener(self, listener: Callable[[StackState], None]) -> None:
    """Calls ``listener(state)`` for every state the supervisor publishes
    from now on (on the lease's reader thread: keep it short)."""
    with self._cond:
      self._listeners.append(listener)

  def wait_for(self, predicate: Callable[[StackState], bool],
               timeout_s: float) -> StackState:
    """Blocks until the published state satisfies ``predicate``; returns it.

    Raises StackUnavailableError if ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    with self._cond:
      while self._state is None or not predicate(self._state):
        left = deadline - time.monotonic()
        if left <= 0:
          raise StackUnavailableError(
              f'The {self._describe()} did not reach the awaited state within '
              f'{timeout_s:.0f} s (state: {self._state}).')
        self._cond.wait(left)
      return self._state

  def check(self, timeout_s: float = 30.0) -> None:
    """Asks the supervisor to probe the stack now (after a failed request),
    so that a dead component is noticed before the next retry."""
    done = threading.Event()
    check_id = next(self._check_ids)
    self._checks[check_id] = done
    if self._send({'op': 'check', 'id': check_id}):
      done.wait(timeout_s)
    self._checks.pop(check_id, None)

  def stop(self, *, wait: bool = False) -> None:
    """Releases the lease. The last lease of a stack stops it; with ``wait``
    this returns only once the supervisor has answered (after stopping the
    stack if this was its last user)."""
    with self._connect_lock:
      self._closed = True
      sock = self._sock
      if sock is None:
        return
      self._send({'op': 'release'})
      if wait:
        sock.settimeout(self.in_force('shutdown_grace_s') * 3 + 15)
        try:
          while sock.recv(65536):
            pass
        except OSError:
          pass
      sock.close()

  # -- connection --------------------------------------------------------------

  def _describe(self) -> str:
    kind = f'Dynamo stack ({self.config.engine})' if self.config.use_dynamo else (
        'vLLM server')
    return f'{kind} for {self.config.served_model_name!r}'

  def _warn_about_policies(self, state: StackState) -> None:
    with self._cond:
      differences = {(name, asked): state.policy[name]
                     for policy in self._policies
                     for name, asked in policy.items()
                     if name in state.policy and asked != state.policy[name]
                     and (name, asked) not in self._warned}
      self._warned.update(differences)
    for (name, asked), value in differences.items():
      _LOGGER.warning(
          'The %s runs with %s=%s (the value of the handler that started it); '
          'a handler here sets %s=%s, which is not used: supervision settings '
          'never split a stack. Give its handlers the same %s to silence '
          'this.', self._describe(), name, value, name, asked, name)

  def _send(self, message: dict) -> bool:
    sock = self._sock
    if sock is None:
      return False
    try:
      with self._send_lock:
        sock.sendall(protocol.encode(message))
      return True
    except OSError:
      return False

  def _connect(self) -> None:
    deadline = time.monotonic() + SUPERVISOR_START_TIMEOUT_S
    spawned: Optional[subprocess.Popen] = None
    stderr = None
    while True:
      sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      try:
        sock.connect(self.address)
        break
      except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
      code = None if spawned is None else spawned.poll()
      if spawned is None or code == protocol.EXIT_ALREADY_RUNNING:
        spawned, stderr = self._spawn_supervisor()
      elif code is not None:
        stderr.seek(0)
        tail = stderr.read().decode(errors='replace')[-3000:]
        raise StackStartupError(
            f'The stack supervisor exited with code {code} before serving. '
            f'Its output:\n{tail}')
      if time.monotonic() > deadline:
        raise StackStartupError(
            'The stack supervisor did not start serving within '
            f'{SUPERVISOR_START_TIMEOUT_S:.0f} s.')
      time.sleep(0.01)
    if stderr is not None:
      stderr.close()
    with self._cond:
      self._sock = sock
      self._state = None
    threading.Thread(
        target=self._read, args=(sock, ), name='abd-lease', daemon=True).start()

  def _spawn_supervisor(self):
    stderr = tempfile.TemporaryFile()
    spawned = subprocess.Popen(
        [sys.executable, '-m', 'apache_beam_dynamo.runtime.supervisor'],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        close_fds=True)
    spawned.stdin.write(
        json.dumps({
            'address': self.address, 'config': self.config.to_json()
        }).encode())
    spawned.stdin.close()
    return spawned, stderr

  def _reconnect(self) -> None:
    """The supervisor went away while we held a lease: start a new stack,
    within the restart budget."""
    with self._connect_lock:
      if self._closed:
        raise StackUnavailableError(f'The {self._describe()} was released.')
      stopped = self._state is not None and self._state.phase == protocol.STOPPED
      if self._sock is not None and not stopped:
        return
      if not stopped:  # the supervisor died: that counts as a restart
        self._supervisor_losses += 1
        if self._supervisor_losses > self.config.max_restarts:
          raise StackUnavailableError(
              f'The {self._describe()} lost its supervisor '
              f'{self._supervisor_losses} times; giving up.')
        _LOGGER.warning(
            'The %s supervisor is gone; starting a new stack.',
            self._describe())
      if self._sock is not None:
        self._sock.close()
      self._sock = None
      self._connect()

  def _read(self, sock: socket.socket) -> None:
    try:
      for message in protocol.read_messages(sock):
        kind = message.get('type')
        if kind == 'state':
          state = protocol.state_from(message)
          with self._cond:
            self._state = state
            self._cond.notify_all()
            listeners = list(self._listeners)
          self._warn_about_policies(state)
          for listener in listeners:
            listener(state)
        elif kind == 'log':
          logging.getLogger(message['logger']).log(
              message['level'], '%s', message['message'])
        elif kind == 'checked':
          event = self._checks.get(message.get('id'))
          if event is not None:
            event.set()
    except (OSError, ValueError):
      pass
    with self._cond:
      if self._sock is sock:
        self._sock = None
      self._cond.notify_all()
    for event in list(self._checks.values()):
      event.set()
