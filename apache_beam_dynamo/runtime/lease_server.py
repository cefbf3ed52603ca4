"""The supervisor's lease server: one connection per lease.

Accepts leases on the stack's abstract Unix socket (same user only), pushes
the stack's state and the stack's log records to them, answers ``check``
requests, and says when the last lease is gone: that stops the stack.
"""

import collections
import logging
import os
import socket
import struct
import threading
from typing import Optional

from apache_beam_dynamo.runtime import protocol
from apache_beam_dynamo.runtime.protocol import StackState

# SIGTERM-to-SIGKILL delay when the last lease holder died without releasing.
ABANDONED_GRACE_S = 1.0


class _Lease:
  """One lease holder's connection."""
  def __init__(self, conn: socket.socket):
    self.conn = conn
    self.lock = threading.Lock()

  def send(self, message: dict) -> bool:
    try:
      with self.lock:
        self.conn.sendall(protocol.encode(message))
      return True
    except OSError:
      return False


class LeaseServer:
  """Accepts leases, fans out state and logs, and says when all are gone.

  Child log lines and the supervisor's own log records go to one lease (the
  oldest), whose process logs them: on Dataflow only SDK processes' logs
  reach Cloud Logging.
  """
  def __init__(self, listener: socket.socket):
    self._listener = listener
    self._lock = threading.Lock()
    self._leases: list[_Lease] = []
    self._closing = False
    self._down = False
    self._waiting: list[_Lease] = []  # came while the stack was stopping
    self._first_lease = threading.Event()
    self.unused = threading.Event()
    self._log_backlog: collections.deque[dict] = collections.deque(maxlen=500)
    self.supervisor = None  # the Supervisor, set before serve()

  # -- outgoing --------------------------------------------------------------

  def publish_state(self, state: StackState) -> None:
    message = protocol.state_message(state)
    with self._lock:
      leases = list(self._leases)
    for lease in leases:
      lease.send(message)

  def publish_log(self, logger: str, level: int, text: str) -> None:
    message = {'type': 'log', 'logger': logger, 'level': level, 'message': text}
    with self._lock:
      sink = self._leases[0] if self._leases else None
      if sink is None:
        self._log_backlog.append(message)
        return
    if not sink.send(message):
      with self._lock:
        self._log_backlog.append(message)

  # -- incoming --------------------------------------------------------------

  def serve(self) -> None:
    threading.Thread(target=self._accept, name='abd-accept', daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        conn, _ = self._listener.accept()
      except OSError:
        return
      _, uid, _ = struct.unpack(
          '3i', conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
      if uid != os.getuid():
        conn.close()
        continue
      lease = _Lease(conn)
      threading.Thread(
          target=self._serve_lease, args=(lease, ), daemon=True).start()

  def _serve_lease(self, lease: _Lease) -> None:
    with self._lock:
      if self._closing:  # answered once the stack is down (shut_down)
        if not self._down:
          self._waiting.append(lease)
          return
        lease.send(protocol.state_message(StackState(protocol.STOPPED)))
        lease.conn.close()
        return
      self._leases.append(lease)
      self._first_lease.set()
      backlog = list(self._log_backlog) if len(self._leases) == 1 else []
      self._log_backlog.clear()
      lease.send(protocol.state_message(self.supervisor.state))
      for message in backlog:
        lease.send(message)
    released = False
    try:
      for message in protocol.read_messages(lease.conn):
        if message.get('op') == 'check':
          self.supervisor.check_now(timeout_s=30.0)
          lease.send({'type': 'checked', 'id': message.get('id')})
        elif message.get('op') == 'release':
          released = True
          break
    except (OSError, ValueError):
      pass
    self._drop(lease, abandoned=not released)

  def _drop(self, lease: _Lease, abandoned: bool) -> None:
    """Ends a lease; the last one stops the stack before its holder hears
    back, so a holder that waits knows the stack is down. A lease whose
    holder died (no release) stops it with a short grace: nobody is left to
    serve, and the stack must not outlive its owner by much."""
    with self._lock:
      if lease in self._leases:
        self._leases.remove(lease)
      last = not self._leases and not self._closing
      if last:
        self._closing = True
    if last:
      self.shut_down(ABANDONED_GRACE_S if abandoned else None)
      lease.send(protocol.state_message(self.supervisor.state))
      self.unused.set()
    else:
      lease.send({'type': 'released'})
    lease.conn.close()

  def shut_down(self, grace_s: Optional[float] = None) -> None:
    """Stops the stack, then closes the listener. Until the stack is down
    the name stays bound, so a newcomer cannot start a second stack (and
    engine) while this one still holds the GPU: it waits, then hears
    'stopped' and starts a fresh supervisor."""
    with self._lock:
      self._closing = True
    self.supervisor.stop(grace_s)
    with self._lock:
      self._down = True  # from now on _serve_lease answers 'stopped' itself
      waiting, self._waiting = self._waiting, []
      # Connections still in the listen backlog (the accepting thread may
      # not have run yet) would be reset by the close: answer them too.
      waiting += self._accept_backlog()
      try:  # wakes the accepting thread, which holds the socket bound
        self._listener.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
      self._listener.close()
    for lease in waiting:
      lease.send(protocol.state_message(StackState(protocol.STOPPED)))
      lease.conn.close()

  def _accept_backlog(self) -> list[_Lease]:
    pending = []
    self._listener.setblocking(False)
    while True:
      try:
        conn, _ = self._listener.accept()
      except OSError:  # BlockingIOError: the backlog is empty
        return pending
      conn.setblocking(True)
      pending.append(_Lease(conn))

  def wait_until_unused(self, first_lease_timeout_s: float) -> None:
    """Returns once every lease is gone (or none came in time)."""
    if self._first_lease.wait(first_lease_timeout_s):
      self.unused.wait()


class ForwardToLeases(logging.Handler):
  """Sends the supervisor's log records to the oldest lease."""
  def __init__(self, server: LeaseServer):
    super().__init__()
    self._server = server

  def emit(self, record: logging.LogRecord) -> None:
    self._server.publish_log(record.name, record.levelno, self.format(record))
