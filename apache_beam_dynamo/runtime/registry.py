"""This process's leases, one per stack, held while any holder object lives.

Holders are the handler copies in Beam's DoFns: every copy of a handler
shares one lease on its stack, and the lease is released (after
``keep_alive_s``) when the last copy is gone.
"""

import atexit
import gc
import os
import threading
import time
import weakref
from typing import Callable, Optional

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import DynamoHandlerError
from apache_beam_dynamo.runtime import protocol
from apache_beam_dynamo.runtime.lease import Lease

# A stack unused this long makes the registry check whether its holders are
# only kept alive by garbage cycles (see _Registry).
IDLE_CHECK_S = 3.0


class _Registry:
  """This process's Leases, each leased while a holder object lives.

  Holders are the handler copies in Beam's DoFns. When the last holder of a
  stack is gone the lease is kept ``keep_alive_s`` longer (the longest of
  this process's handlers of the stack), so a pipeline
  that starts right after the previous one reuses the stack.

  Beam keeps a finished pipeline's DoFns in reference cycles, which only the
  cyclic garbage collector frees, and that may not run for a long time in an
  idle process. So while a stack is idle the registry runs a collection
  every IDLE_CHECK_S: if the holders were garbage, the stack stops a few
  seconds after the pipeline ended; if they are alive, nothing changes.
  """
  def __init__(self, lease_factory: Callable[[StackConfig, str], Lease] = Lease):
    self._lease_factory = lease_factory
    self._lock = threading.Lock()
    self._reset()
    atexit.register(self.close_all)

  def _reset(self) -> None:
    self._pid = os.getpid()
    self._stacks: dict[str, Lease] = {}  # by address
    self._holders: dict[str, int] = {}
    # Per process: the longest keep_alive_s of the handlers using a stack.
    self._keep_alive: dict[str, float] = {}
    self._expiries: dict[str, threading.Timer] = {}
    self._registered: 'weakref.WeakKeyDictionary[object, set[str]]' = (
        weakref.WeakKeyDictionary())
    self._finalizers: dict[tuple[int, str], weakref.finalize] = {}
    self._janitor: Optional[threading.Thread] = None

  def _watch_idle_stacks(self) -> None:
    while True:
      time.sleep(IDLE_CHECK_S)
      with self._lock:
        if not self._holders or os.getpid() != self._pid:
          self._janitor = None
          return
        idle = any(
            time.monotonic() - self._stacks[fp].last_used > IDLE_CHECK_S
            for fp in self._holders)
      if idle:
        gc.collect()

  def acquire(self, config: StackConfig, holder: object) -> Lease:
    """The started Lease for ``config``, held while ``holder`` lives.

    Leases are keyed by their supervisor's address: the config's
    fingerprint within this process's sharing scope.
    """
    address = protocol.socket_address(
        config.fingerprint(), protocol.sharing_scope(os.environ))
    with self._lock:
      if os.getpid() != self._pid:  # forked: the parent's leases aren't ours
        self._reset()
      lease = self._stacks.get(address)
      if lease is None:
        lease = self._stacks[address] = self._lease_factory(config, address)
      self._keep_alive[address] = max(
          config.keep_alive_s, self._keep_alive.get(address, 0.0))
      self._hold(address, holder)
    if config != lease.config:
      lease.request(config)
    lease.start()
    return lease

  def hold(self, lease: Lease, holder: object) -> Lease:
    """Keeps ``lease`` held while ``holder`` lives too, and returns it; a
    lease that was released meanwhile is replaced by a fresh one. Cheap when
    ``holder`` already holds it (a dict lookup): called for every batch."""
    with self._lock:
      if self._stacks.get(lease.address) is lease and os.getpid() == self._pid:
        self._hold(lease.address, holder)
        return lease
    return self.acquire(lease.config, holder)

  def _hold(self, address: str, holder: object) -> None:
    addresses = self._registered.setdefault(holder, set())
    if address in addresses:
      return
    addresses.add(address)
    self._holders[address] = self._holders.get(address, 0) + 1
    expiry = self._expiries.pop(address, None)
    if expiry is not None:
      expiry.cancel()
    release = weakref.finalize(holder, self._finalized, id(holder), address)
    release.atexit = False  # close_all handles interpreter exit
    self._finalizers[(id(holder), address)] = release
    if self._janitor is None:
      self._janitor = threading.Thread(
          target=self._watch_idle_stacks, name='abd-idle', daemon=True)
      self._janitor.start()

  def drop(self, lease: Lease, holder: object) -> None:
    """``holder`` no longer holds ``lease``: its stack failed to start for
    it. A failed stack then stops with its last holder, and a later
    ``acquire`` starts a fresh one."""
    with self._lock:
      addresses = self._registered.get(holder, set())
      if lease.address not in addresses:
        return
      addresses.discard(lease.address)
      finalizer = self._finalizers.pop((id(holder), lease.address), None)
    if finalizer is not None:
      finalizer.detach()
    self._release(lease.address)

  def _finalized(self, holder_id: int, address: str) -> None:
    with self._lock:
      self._finalizers.pop((holder_id, address), None)
    self._release(address)

  def _release(self, address: str) -> None:
    with self._lock:
      if address not in self._holders:  # close_all() released it already
        return
      self._holders[address] -= 1
      if self._holders[address] > 0:
        return
      keep_alive_s = self._keep_alive.get(
          address, self._stacks[address].config.keep_alive_s)
      expiry = threading.Timer(keep_alive_s, self._expire, (address, ))
      expiry.daemon = True
      self._expiries[address] = expiry
    expiry.start()

  def _expire(self, address: str) -> None:
    with self._lock:
      if self._holders.get(address, 0) > 0:
        return
      self._holders.pop(address, None)
      self._expiries.pop(address, None)
      self._keep_alive.pop(address, None)
      stack = self._stacks.pop(address, None)
    if stack is not None:
      stack.stop()

  def close_all(self) -> None:
    """At interpreter exit: release every lease and wait for stacks this
    process was the last user of to be down, so none outlives the program."""
    with self._lock:
      if os.getpid() != self._pid:
        return
      stacks = list(self._stacks.values())
      for expiry in self._expiries.values():
        expiry.cancel()
      self._stacks, self._holders, self._expiries = {}, {}, {}
      self._keep_alive, self._finalizers = {}, {}
    for stack in stacks:
      try:
        stack.stop(wait=True)
      except DynamoHandlerError:
        pass


registry = _Registry()
"""The process-wide registry: ``registry.acquire(config, holder)``."""
