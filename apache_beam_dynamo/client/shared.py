"""The shared request client: one per process, for every batch and thread.

One asyncio event loop runs on a daemon thread with one pool of persistent
connections per stack (transport.py), so connections are reused across
batches and no batch pays for a new loop or client. Requests in flight are
bounded per stack. The retry policy sits on top, in ``send``: transient
failures are retried with backoff and across stack restarts; permanent
ones fail only their element.

Neither the openai SDK nor aiohttp carries the requests: on a 2-core
machine, where the client shares the CPU with the stack, their per-request
overhead cost a large part of the throughput (bench/LOG.md). Replies are
still parsed into the openai types users expect.
"""

import asyncio
import atexit
import dataclasses
import json
import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Optional, Sequence, Union

from apache_beam_dynamo.config.request import RequestConfig
from apache_beam_dynamo.errors import RequestFailedError
from apache_beam_dynamo.runtime.lease import Lease
from apache_beam_dynamo.errors import HTTPError
from apache_beam_dynamo.net.transport import ConnectionPool

_MAX_BACKOFF_S = 30.0
# 404 is transient here: the frontend answers it while a restarted engine has
# not registered its model yet.
_TRANSIENT_STATUS = frozenset({404, 408, 409, 425, 429})


@dataclasses.dataclass(frozen=True)
class Reply:
  status: int
  body: bytes
  latency_s: float


@dataclasses.dataclass(frozen=True)
class TransportError:
  """No HTTP reply: connection refused or reset, timeout."""
  reason: str


def is_transient(reply: Union[Reply, TransportError]) -> bool:
  if isinstance(reply, TransportError):
    return True
  return reply.status in _TRANSIENT_STATUS or reply.status >= 500


def error_message(reply: Reply) -> str:
  try:
    return str(json.loads(reply.body).get('message') or reply.body[:500])
  except (ValueError, AttributeError):
    return reply.body[:500].decode(errors='replace')


class SharedClient:
  """An event loop thread with one connection pool per stack.

  A pool is keyed by its stack (the lease's address), not by the server's
  port: when a stack moves to new ports the old pool is closed and
  replaced, so pools never pile up.
  """
  def __init__(self):
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(
        target=self._loop.run_forever, name='abd-client', daemon=True)
    self._thread.start()
    self._pools: dict[str, ConnectionPool] = {}
    atexit.register(self.close)

  def close(self) -> None:
    """Closes the pooled connections and ends the loop thread."""
    if self._loop.is_closed():
      return
    for pool in self._pools.values():
      self._loop.call_soon_threadsafe(pool.close)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=5)
    self._loop.close()

  def post_all(
      self,
      stack: str,
      url: str,
      bodies: Sequence[bytes],
      *,
      concurrency: int,
      timeout_s: float) -> list[Union[Reply, TransportError]]:
    """POSTs every body to ``url`` of ``stack`` concurrently; one reply per
    body. ``concurrency`` bounds the requests in flight to that stack from
    this process (the pool's size), whatever the number of batches."""
    return asyncio.run_coroutine_threadsafe(
        self._post_all(stack, url, bodies, concurrency, timeout_s),
        self._loop).result()

  def _pool(self, stack: str, address: tuple[str, int],
            size: int) -> ConnectionPool:
    pool = self._pools.get(stack)
    if pool is not None and pool.address != address:
      pool.close()  # the stack moved to new ports
      pool = None
    if pool is None:
      pool = self._pools[stack] = ConnectionPool(*address, size=size)
    return pool

  async def _post_all(self, stack, url, bodies, concurrency, timeout_s):
    parsed = urllib.parse.urlsplit(url)
    pool = self._pool(stack, (parsed.hostname, parsed.port), concurrency)
    replies: list = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    # At most `concurrency` tasks per batch, each taking the next body: a
    # task per body would queue thousands of waiters on the pool, and
    # asyncio.Semaphore.acquire scans its waiters every time.
    async def worker():
      for index in pending:
        replies[index] = await self._post(pool, parsed.path, bodies[index],
                                          timeout_s)

    await asyncio.gather(
        *(worker() for _ in range(min(concurrency, len(bodies)))))
    return replies

  @staticmethod
  async def _post(pool, path, body, timeout_s):
    started = time.perf_counter()
    try:
      status, payload = await pool.post(path, body, timeout_s)
    except asyncio.TimeoutError:
      return TransportError(f'no reply within {timeout_s:.0f} s')
    except HTTPError as e:
      return TransportError(str(e))
    return Reply(status, payload, time.perf_counter() - started)


_client: Optional[SharedClient] = None
_client_pid: Optional[int] = None
_client_lock = threading.Lock()


def shared_client() -> SharedClient:
  """This process's client (a forked child gets a fresh one)."""
  global _client, _client_pid
  with _client_lock:
    if _client is None or _client_pid != os.getpid():
      _client, _client_pid = SharedClient(), os.getpid()
    return _client


@dataclasses.dataclass
class BatchStats:
  """What one batch cost; the handler turns it into Beam metrics."""
  requests: int = 0
  retries: int = 0
  failures: int = 0
  latencies_ms: list[int] = dataclasses.field(default_factory=list)


def backoff_s(attempt: int, first_s: float) -> float:
  return min(first_s * 2**(attempt - 1), _MAX_BACKOFF_S)


def send(
    stack: Lease,
    route: str,
    bodies: Sequence[Optional[bytes]],
    parse: Callable[[bytes], Any],
    config: RequestConfig,
    stats: BatchStats) -> list[Any]:
  """Sends each body to ``route`` until it succeeds or fails for good.

  Returns one outcome per body: the parsed response, or a RequestFailedError
  for an element the server rejected (4xx) or that stayed failing after
  ``max_request_retries`` retries. A None body is skipped (outcome None).
  Raises StackUnavailableError/StackStartupError when the stack itself is
  gone: that fails the whole batch, and nothing is emitted twice.
  """
  outcomes: list[Any] = [None] * len(bodies)
  attempts = [0] * len(bodies)
  pending = [i for i, body in enumerate(bodies) if body is not None]
  while pending:
    state = stack.wait_ready()
    replies = shared_client().post_all(
        stack.address,
        state.base_url + route, [bodies[i] for i in pending],
        concurrency=config.concurrency(state.engines, state.max_num_seqs),
        timeout_s=config.request_timeout_s)
    stats.requests += len(pending)
    retry = []
    for index, reply in zip(pending, replies):
      if isinstance(reply, Reply):
        stats.latencies_ms.append(int(reply.latency_s * 1000))
      if isinstance(reply, Reply) and reply.status == 200:
        try:
          outcomes[index] = parse(reply.body)
        except ValueError as e:
          outcomes[index] = RequestFailedError(200, f'unparseable reply: {e}')
      elif not is_transient(reply):
        outcomes[index] = RequestFailedError(reply.status, error_message(reply))
      elif attempts[index] >= config.max_request_retries:
        reason = reply.reason if isinstance(reply, TransportError) else (
            f'HTTP {reply.status}: {error_message(reply)}')
        outcomes[index] = RequestFailedError(
            getattr(reply, 'status', 0),
            f'still failing after {attempts[index]} retries: {reason}')
      else:
        attempts[index] += 1
        retry.append(index)
    stats.failures += sum(
        isinstance(outcomes[i], RequestFailedError) for i in pending)
    if retry:
      stats.retries += len(retry)
      # Let the supervisor look now: if a component died, the stack turns
      # "recovering" and the next wait_ready() waits for the restart.
      stack.check()
      time.sleep(
          backoff_s(max(attempts[i] for i in retry), config.retry_backoff_s))
    pending = retry
  return outcomes
