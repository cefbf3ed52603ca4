"""The runtime's policy pieces without a stack: the restart budget, the
supervisor's lease server (over a real Unix socket, with a stand-in
supervisor) and the process's lease registry (with stand-in leases)."""

import gc
import socket
import threading
import uuid

import pytest

from apache_beam_dynamo.runtime import protocol
from apache_beam_dynamo.runtime.lease import Lease
from apache_beam_dynamo.runtime.lease_server import (
    ABANDONED_GRACE_S, LeaseServer)
from apache_beam_dynamo.runtime.protocol import StackState
from apache_beam_dynamo.runtime.registry import _Registry
from apache_beam_dynamo.runtime.restart_policy import (
    MAX_BACKOFF_S, RestartBudget)

from conftest import Holder, mocker_config, wait_until


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_restart_budget_backs_off_and_runs_out():
  clock = Clock()
  budget = RestartBudget(max_restarts=3, window_s=60, clock=clock)
  assert [budget.spend(), budget.spend(), budget.spend()] == [1.0, 2.0, 4.0]
  assert budget.spend() is None and budget.used == 3


def test_restart_budget_forgets_restarts_outside_its_window():
  clock = Clock()
  budget = RestartBudget(max_restarts=2, window_s=60, clock=clock)
  budget.spend()
  clock.now += 30
  budget.spend()
  assert budget.spend() is None
  clock.now += 31  # the first restart left the window
  assert budget.used == 1 and budget.spend() == 2.0


def test_restart_backoff_is_capped():
  budget = RestartBudget(max_restarts=20, window_s=60, clock=Clock())
  delays = [budget.spend() for _ in range(10)]
  assert delays[-1] == MAX_BACKOFF_S and max(delays) == MAX_BACKOFF_S


def test_no_restarts_allowed():
  assert RestartBudget(max_restarts=0, window_s=60).spend() is None


class FakeSupervisor:
  def __init__(self):
    self.state = StackState(protocol.READY, base_url='http://127.0.0.1:1')
    self.stopped_with = []
    self.checks = 0

  def check_now(self, timeout_s):
    self.checks += 1

  def stop(self, grace_s=None):
    self.stopped_with.append(grace_s)
    self.state = StackState(protocol.STOPPED)


@pytest.fixture
def lease_server():
  address = f'\0abd-test-{uuid.uuid4().hex}'
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(address)
  listener.listen(8)
  server = LeaseServer(listener)
  server.supervisor = FakeSupervisor()
  server.serve()
  yield server, address
  listener.close()


class Client:
  """A lease holder speaking the protocol."""
  def __init__(self, address):
    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self.sock.settimeout(10)
    self.sock.connect(address)
    self.messages = protocol.read_messages(self.sock)

  def send(self, message):
    self.sock.sendall(protocol.encode(message))

  def next(self):
    return next(self.messages)

  def close(self):
    self.messages.close()  # its file object holds the socket open
    self.sock.close()


def test_a_lease_gets_the_state_then_the_logs_kept_for_it(lease_server):
  server, address = lease_server
  server.publish_log('apache_beam_dynamo.engine', 20, 'before anyone came')
  client = Client(address)
  assert client.next()['phase'] == protocol.READY
  assert client.next()['message'] == 'before anyone came'
  server.publish_state(StackState(protocol.RECOVERING, restarts=1))
  assert client.next() == protocol.state_message(
      StackState(protocol.RECOVERING, restarts=1))
  client.send({'op': 'check', 'id': 7})
  assert client.next() == {'type': 'checked', 'id': 7}
  assert server.supervisor.checks == 1
  client.send({'op': 'release'})
  assert client.next()['phase'] == protocol.STOPPED
  assert server.supervisor.stopped_with == [None]
  assert server.unused.wait(10)
  client.close()


def test_the_last_release_stops_the_stack_and_earlier_ones_do_not(lease_server):
  server, address = lease_server
  first, second = Client(address), Client(address)
  first.next(), second.next()
  first.send({'op': 'release'})
  assert first.next() == {'type': 'released'}
  assert server.supervisor.stopped_with == [] and not server.unused.is_set()
  second.send({'op': 'release'})
  assert second.next()['phase'] == protocol.STOPPED
  assert server.supervisor.stopped_with == [None]  # the config's own grace
  assert server.unused.wait(10)
  first.close(), second.close()


def test_a_holder_that_dies_stops_the_stack_with_a_short_grace(lease_server):
  server, address = lease_server
  client = Client(address)
  client.next()
  client.close()  # no release: the holder died
  assert server.unused.wait(10)
  assert server.supervisor.stopped_with == [ABANDONED_GRACE_S]


class FakeLease:
  def __init__(self, config, address):
    self.config, self.address = config, address
    self.started = self.stopped = 0
    self.stopped_event = threading.Event()
    self.requested = []

  def start(self):
    self.started += 1

  def request(self, config):
    self.requested.append(config)

  def stop(self, *, wait=False):
    self.stopped += 1
    self.stopped_event.set()


def test_registry_shares_one_lease_per_config_and_releases_it_with_the_last_holder():
  registry = _Registry(lease_factory=FakeLease)
  config = mocker_config(keep_alive_s=0)
  first, second = Holder(), Holder()
  lease = registry.acquire(config, first)
  assert registry.acquire(config, second) is lease
  assert registry.acquire(config, first) is lease  # one holder counts once
  other = registry.acquire(mocker_config(keep_alive_s=0, num_engines=2), first)
  assert other is not lease
  del first
  gc.collect()
  assert lease.stopped == 0  # second still holds it
  del second
  gc.collect()
  assert lease.stopped_event.wait(10) and lease.stopped == 1


def test_registry_keeps_a_released_lease_for_keep_alive_and_reuses_it():
  registry = _Registry(lease_factory=FakeLease)
  config = mocker_config(keep_alive_s=600)
  holder = Holder()
  lease = registry.acquire(config, holder)
  del holder
  gc.collect()
  again = Holder()
  assert registry.acquire(config, again) is lease and lease.stopped == 0
  registry.close_all()
  assert lease.stopped == 1


def test_registry_shares_a_lease_between_handlers_differing_in_policy():
  registry = _Registry(lease_factory=FakeLease)
  holder = Holder()
  lease = registry.acquire(mocker_config(keep_alive_s=0), holder)
  slow = mocker_config(keep_alive_s=600, startup_timeout_s=5, max_restarts=0)
  assert registry.acquire(slow, holder) is lease
  assert lease.requested == [slow]  # the lease compares it with the stack's
  del holder
  gc.collect()
  assert lease.stopped == 0  # the longest keep_alive_s of the process wins
  registry.close_all()
  assert lease.stopped == 1


def test_a_lease_warns_once_per_policy_the_stack_does_not_use(caplog):
  lease = Lease(mocker_config(startup_timeout_s=30), '\0abd-unused')
  assert lease.in_force('startup_timeout_s') == 30  # until the stack says
  lease.request(mocker_config(startup_timeout_s=30, max_restarts=0))
  started_by_another = mocker_config(startup_timeout_s=60, shutdown_grace_s=2)
  state = StackState(protocol.READY, policy=started_by_another.policy())
  lease._state = state
  lease._warn_about_policies(state)
  lease._warn_about_policies(state)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 3, warnings
  text = '\n'.join(warnings)
  for part in ('startup_timeout_s=60', 'startup_timeout_s=30',
               'max_restarts=3', 'max_restarts=0', 'shutdown_grace_s=2',
               'shutdown_grace_s=10'):
    assert part in text, part
  assert lease.in_force('startup_timeout_s') == 60


def test_a_connection_still_in_the_backlog_hears_stopped_not_a_reset():
  """shut_down answers connections the accepting thread never took (on a
  busy machine it may not run before the listener closes)."""
  address = f'\0abd-test-{uuid.uuid4().hex}'
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(address)
  listener.listen(8)
  server = LeaseServer(listener)
  server.supervisor = FakeSupervisor()  # serve() not called: nobody accepts
  newcomer = Client(address)
  server.shut_down()
  assert newcomer.next()['phase'] == protocol.STOPPED
  newcomer.close()


def test_a_newcomer_while_the_stack_stops_waits_until_it_is_down(lease_server):
  """The listener stays bound until the stack is down: no second supervisor
  (and engine) can start while the GPU is still held."""
  server, address = lease_server
  stopping, down = threading.Event(), threading.Event()
  stop = server.supervisor.stop

  def slow_stop(grace_s=None):
    stopping.set()
    assert down.wait(10)
    stop(grace_s)

  server.supervisor.stop = slow_stop
  owner = Client(address)
  owner.next()
  owner.send({'op': 'release'})
  assert stopping.wait(10)
  newcomer = Client(address)  # connects: the name is still bound
  rival = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  with pytest.raises(OSError):
    rival.bind(address)  # a second supervisor would exit: already running
  down.set()
  assert newcomer.next()['phase'] == protocol.STOPPED
  assert owner.next()['phase'] == protocol.STOPPED
  assert server.unused.wait(10)
  rival.close()

  def name_is_free():
    # The kernel frees the name once the accepting thread has left accept()
    # (it was woken by shut_down, a moment after the close).
    fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
      fresh.bind(address)
      return True
    except OSError:
      return False
    finally:
      fresh.close()

  wait_until(name_is_free, 10, 'the socket name to be free')  # a fresh supervisor can start
  owner.close(), newcomer.close()


def test_a_holder_whose_stack_failed_drops_its_hold():
  registry = _Registry(lease_factory=FakeLease)
  holder = Holder()
  lease = registry.acquire(mocker_config(keep_alive_s=0), holder)
  registry.drop(lease, holder)
  assert lease.stopped_event.wait(10) and lease.stopped == 1
  registry.drop(lease, holder)  # twice: nothing more to drop
  fresh = registry.acquire(mocker_config(keep_alive_s=0), holder)
  assert fresh is not lease  # a retry gets a fresh lease
  del holder
  gc.collect()
  assert fresh.stopped_event.wait(10) and lease.stopped == 1
