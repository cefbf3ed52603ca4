"""The package's one HTTP stack: a lean HTTP/1.1 client on loopback.

Two entry points over one implementation of the protocol: the shared
client's ``ConnectionPool`` (persistent keep-alive connections, JSON POSTs)
and ``request`` (one exchange on a new connection) for the supervisor's
probes, its etcd calls and its metrics sampling. It speaks what the stack's
servers answer: status line, headers, a Content-Length or chunked body (with
or without trailers), ``Connection: close``.

Why not aiohttp, which Dynamo already installs: measured against it
(bench/http_clients.py, docs/gpu.md) this client costs 2.2-2.4x less CPU per
request (H200 machine: 0.10 vs 0.23 ms; 2-core CPU lane: 160 vs 370 us,
bench/LOG.md). On the 16-core H200 machine both reach the same throughput
(within 4%: the server sets the pace); on the 2-core lane, where client and
stack share the CPU as on a small Dataflow GPU worker, aiohttp's extra CPU
cost the server 15-20% of its requests per second (bench/LOG.md step 4).
"""

import asyncio
import urllib.parse
from typing import Optional

from apache_beam_dynamo.errors import HTTPError


class ConnectionPool:
  """Up to ``size`` persistent connections to one host and port.

  ``post`` waits for a free connection, so the pool size is also the
  bound on requests in flight. A connection that the server had closed
  while idle (vLLM's server drops idle keep-alives after 5 s) fails before
  any reply byte; the request is then sent again on a new connection.
  """
  def __init__(self, host: str, port: int, size: int):
    self._host, self._port = host, port
    self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    self._slots = asyncio.Semaphore(size)
    self._head = _head(host, port)

  @property
  def address(self) -> tuple[str, int]:
    return self._host, self._port

  async def post(self, path: str, body: bytes,
                 timeout_s: float) -> tuple[int, bytes]:
    """Returns (status, body); raises HTTPError or asyncio.TimeoutError.

    ``timeout_s`` bounds the exchange, not the wait for a free connection.
    """
    async with self._slots:
      return await asyncio.wait_for(self._send(path, body), timeout_s)

  async def _send(self, path: str, body: bytes) -> tuple[int, bytes]:
    while self._idle:
      reader, writer = self._idle.pop()
      reply = await self._exchange(reader, writer, path, body, reused=True)
      if reply is not None:
        return reply
    try:
      reader, writer = await asyncio.open_connection(self._host, self._port)
    except OSError as e:
      raise HTTPError(f'cannot connect to {self._host}:{self._port}: {e}') from e
    return await self._exchange(reader, writer, path, body, reused=False)

  async def _exchange(self, reader, writer, path, body, reused):
    """One request on one connection. None: a reused connection was dead
    before the server saw the request (try the next one)."""
    started_reply = False
    try:
      writer.write(_message(b'POST', path, self._head, body))
      status_line = await reader.readline()
      if not status_line:
        raise asyncio.IncompleteReadError(b'', None)
      started_reply = True
      status, keep_alive, payload = await _read_reply(status_line, reader)
    except (OSError, asyncio.IncompleteReadError, ValueError,
            asyncio.LimitOverrunError) as e:
      writer.close()
      if reused and not started_reply:
        return None
      raise HTTPError(f'{type(e).__name__}: {e}' if str(e) else
                      'connection closed by the server') from e
    except BaseException:  # cancelled (timeout): the connection is unusable
      writer.close()
      raise
    if keep_alive:
      self._idle.append((reader, writer))
    else:
      writer.close()
    return status, payload

  def close(self) -> None:
    for _, writer in self._idle:
      writer.close()
    self._idle.clear()


def _head(host: str, port: int, extra: str = '') -> bytes:
  """The headers every request to ``host:port`` has, up to Content-Length."""
  return (f'Host: {host}:{port}\r\n{extra}Content-Type: application/json\r\n'
          'Content-Length: ').encode()


def _message(method: bytes, path: str, head: bytes, body: bytes) -> bytes:
  return (method + b' %s HTTP/1.1\r\n' % path.encode() + head +
          b'%d\r\n\r\n' % len(body) + body)


def request(url: str,
            method: str = 'GET',
            body: bytes = b'',
            timeout_s: float = 2.0) -> tuple[int, bytes]:
  """One exchange on a new connection: (status, body). Raises HTTPError
  when it cannot complete within ``timeout_s`` (refused, reset, timeout).

  For callers without an event loop of their own (the supervisor's probes).
  """
  parsed = urllib.parse.urlsplit(url)
  path = parsed.path or '/'
  if parsed.query:
    path += '?' + parsed.query
  try:
    return asyncio.run(
        asyncio.wait_for(
            _one_shot(parsed.hostname, parsed.port, method, path, body),
            timeout_s))
  except asyncio.TimeoutError:
    raise HTTPError(f'{method} {url}: no reply within {timeout_s} s') from None


async def _one_shot(host, port, method, path, body):
  try:
    reader, writer = await asyncio.open_connection(host, port)
  except OSError as e:
    raise HTTPError(f'cannot connect to {host}:{port}: {e}') from e
  try:
    writer.write(
        _message(method.encode(), path,
                 _head(host, port, 'Connection: close\r\n'), body))
    status_line = await reader.readline()
    if not status_line:
      raise HTTPError(f'{host}:{port} closed the connection without a reply')
    status, _, payload = await _read_reply(status_line, reader)
    return status, payload
  except (OSError, asyncio.IncompleteReadError, ValueError,
          asyncio.LimitOverrunError) as e:
    raise HTTPError(f'{method} {host}:{port}{path}: {type(e).__name__}: {e}') from e
  finally:
    writer.close()


async def _read_reply(
    status_line: bytes,
    reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
  """Parses one response after its status line: (status, keep-alive, body)."""
  version, status = status_line.split(None, 2)[:2]
  length: Optional[int] = None
  chunked = False
  keep_alive = version == b'HTTP/1.1'
  while True:
    line = await reader.readline()
    if line in (b'\r\n', b'\n', b''):
      break
    name, _, value = line.partition(b':')
    name = name.strip().lower()
    if name == b'content-length':
      length = int(value)
    elif name == b'transfer-encoding':
      chunked = b'chunked' in value.lower()
    elif name == b'connection':
      keep_alive = value.strip().lower() == b'keep-alive'
  if chunked:
    parts = []
    while True:
      size = int((await reader.readline()).split(b';')[0], 16)
      if size == 0:
        # Trailer fields, if any, then the empty line that ends the message.
        while (await reader.readline()) not in (b'\r\n', b'\n', b''):
          pass
        break
      parts.append(await reader.readexactly(size))
      await reader.readexactly(2)
    payload = b''.join(parts)
  elif length is not None:
    payload = await reader.readexactly(length)
  else:
    payload = await reader.read()
    keep_alive = False
  return int(status), keep_alive, payload
