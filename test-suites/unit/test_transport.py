"""The package's HTTP/1.1 transport against real local servers: the
shared client's keep-alive pool and the one-shot request of the probes."""

import asyncio
import socket
import threading

import pytest

from apache_beam_dynamo.errors import HTTPError
from apache_beam_dynamo.net import transport
from apache_beam_dynamo.net.transport import ConnectionPool


class RawServer:
  """A loopback TCP server answering each request with canned bytes.

  ``replies`` is a list of raw responses; after sending one, the server
  closes the connection if ``close_after`` says so.
  """
  def __init__(self, replies, close_after=False):
    self.replies = list(replies)
    self.close_after = close_after
    self.connections = 0
    self.requests = 0
    self.sock = socket.socket()
    self.sock.bind(('127.0.0.1', 0))
    self.sock.listen()
    self.port = self.sock.getsockname()[1]
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while True:
      try:
        conn, _ = self.sock.accept()
      except OSError:
        return
      self.connections += 1
      threading.Thread(target=self._handle, args=(conn, ), daemon=True).start()

  def _handle(self, conn):
    with conn:
      buffer = b''
      while True:
        while b'\r\n\r\n' not in buffer:
          data = conn.recv(65536)
          if not data:
            return
          buffer += data
        head, _, rest = buffer.partition(b'\r\n\r\n')
        length = int([l for l in head.split(b'\r\n')
                      if l.lower().startswith(b'content-length')][0].split(b':')[1])
        while len(rest) < length:
          rest += conn.recv(65536)
        buffer = rest[length:]
        self.requests += 1
        conn.sendall(self.replies.pop(0) if len(self.replies) > 1 else self.replies[0])
        if self.close_after:
          return

  def close(self):
    self.sock.close()


@pytest.fixture
def raw_server():
  """Starts RawServers for a test; closes them after it."""
  servers = []

  def start(replies, close_after=False):
    servers.append(RawServer(replies, close_after))
    return servers[-1]

  yield start
  for server in servers:
    server.close()


def post_many(port, bodies, size=4, timeout_s=5.0):
  async def go():
    pool = ConnectionPool('127.0.0.1', port, size)
    try:
      return [await pool.post('/v1/completions', b, timeout_s) for b in bodies]
    finally:
      pool.close()
  return asyncio.run(go())


def test_content_length_reply_and_connection_reuse(raw_server):
  server = raw_server([b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}'])
  assert post_many(server.port, [b'{}'] * 5) == [(200, b'{}')] * 5
  assert server.connections == 1 and server.requests == 5


def test_chunked_reply(raw_server):
  chunked = (b'HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n'
             b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')
  server = raw_server([chunked])
  assert post_many(server.port, [b'{}'] * 2) == [(400, b'{"a": 1}')] * 2
  assert server.connections == 1


def test_chunked_reply_with_trailers_keeps_the_connection_in_step(raw_server):
  # Trailer fields after the last chunk belong to the reply: left unread
  # they would be taken for the next reply's status line.
  chunked = (b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n'
             b'2\r\n{}\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n')
  server = raw_server([chunked])
  assert post_many(server.port, [b'{}'] * 3) == [(200, b'{}')] * 3
  assert server.connections == 1 and server.requests == 3


def test_one_shot_request_for_probes(raw_server):
  server = raw_server([b'HTTP/1.1 503 Service Unavailable\r\n'
                       b'content-length: 8\r\n\r\nnotready'])
  url = f'http://127.0.0.1:{server.port}'
  assert transport.request(url + '/health') == (503, b'notready')
  assert transport.request(url + '/v3/kv/range', 'POST', b'{}') == (
      503, b'notready')
  assert server.connections == 2


def test_one_shot_request_reads_a_reply_ended_by_close(raw_server):
  server = raw_server([b'HTTP/1.1 200 OK\r\n\r\nuntil close'],
                      close_after=True)
  assert transport.request(f'http://127.0.0.1:{server.port}/metrics') == (
      200, b'until close')


def test_one_shot_request_failures_are_http_errors():
  silent = socket.socket()
  silent.bind(('127.0.0.1', 0))
  silent.listen()
  port = silent.getsockname()[1]
  try:
    with pytest.raises(HTTPError, match='no reply within'):
      transport.request(f'http://127.0.0.1:{port}/live', timeout_s=0.3)
  finally:
    silent.close()
  with pytest.raises(HTTPError, match='cannot connect'):
    transport.request(f'http://127.0.0.1:{port}/live')


def test_connection_close_is_honoured(raw_server):
  server = raw_server(
      [b'HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}'],
      close_after=True)
  assert post_many(server.port, [b'{}'] * 3) == [(200, b'{}')] * 3
  assert server.connections == 3


def test_a_connection_the_server_closed_while_idle_is_replaced(raw_server):
  # The server closes after each reply without saying so (like an idle
  # keep-alive timeout): the next request on that connection gets no byte
  # back and is sent again on a new connection.
  server = raw_server([b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}'],
                     close_after=True)
  assert post_many(server.port, [b'{}'] * 3) == [(200, b'{}')] * 3
  assert server.requests == 3


def test_refused_connection_is_an_http_error():
  probe = socket.socket()
  probe.bind(('127.0.0.1', 0))
  port = probe.getsockname()[1]
  probe.close()
  with pytest.raises(HTTPError, match='cannot connect'):
    post_many(port, [b'{}'])


def test_a_reply_cut_short_is_an_http_error(raw_server):
  server = raw_server([b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"x'],
                     close_after=True)
  with pytest.raises(HTTPError):
    post_many(server.port, [b'{}'])


def test_timeout_bounds_the_exchange():
  silent = socket.socket()
  silent.bind(('127.0.0.1', 0))
  silent.listen()  # accepts (kernel backlog) but never answers
  try:
    with pytest.raises(asyncio.TimeoutError):
      post_many(silent.getsockname()[1], [b'{}'], timeout_s=0.3)
  finally:
    silent.close()
