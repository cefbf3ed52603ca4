"""A lean HTTP/1.1 client for JSON POSTs to the stack on loopback.

The stack's frontend is CPU-bound on the same machine as the pipeline, so
every microsecond the client spends per request is taken from the server.
A general-purpose client (aiohttp) cost ~370 us of CPU per request here;
this one, persistent keep-alive connections over asyncio streams, ~160 us
(bench/LOG.md). It speaks just what the stack's servers answer: status
line, headers, a Content-Length or chunked body, ``Connection: close``.
"""

import asyncio
from typing import Optional


class HTTPError(Exception):
  """The exchange did not complete (refused, reset, closed, malformed)."""


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
    self._head = (f'Host: {host}:{port}\r\nContent-Type: application/json\r\n'
                  'Content-Length: ').encode()

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
      writer.write(b'POST %s HTTP/1.1\r\n' % path.encode() + self._head +
                   b'%d\r\n\r\n' % len(body) + body)
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
        await reader.readline()  # no trailers from these servers
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
