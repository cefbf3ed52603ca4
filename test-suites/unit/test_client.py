"""The shared client's retry policy, against a scripted local HTTP server."""

import http.server
import json
import threading

import pytest

from apache_beam_dynamo.client import shared as client
from apache_beam_dynamo.config.request import RequestConfig
from apache_beam_dynamo.errors import RequestFailedError
from apache_beam_dynamo.runtime.protocol import StackState


class ScriptedServer(http.server.ThreadingHTTPServer):
  """Answers POSTs with the next status of a per-prompt script."""
  def __init__(self, scripts):
    self.scripts = {k: list(v) for k, v in scripts.items()}
    self.calls = []
    super().__init__(('127.0.0.1', 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
    prompt = body['prompt']
    self.server.calls.append(prompt)
    script = self.server.scripts[prompt]
    status = script.pop(0) if len(script) > 1 else script[0]
    payload = json.dumps({'echo': prompt} if status == 200 else {
        'message': f'scripted {status}'
    }).encode()
    self.send_response(status)
    self.send_header('Content-Length', str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  def log_message(self, *args):
    pass


class FakeStack:
  """Stands in for Lease: always ready at the server's address."""
  def __init__(self, base_url):
    self.state = StackState('ready', base_url=base_url, model='m')
    self.address = base_url  # one pool per stack
    self.checks = 0

  def wait_ready(self, timeout_s=None):
    return self.state

  def check(self, timeout_s=30.0):
    self.checks += 1


@pytest.fixture
def serve():
  servers = []

  def start(scripts):
    server = ScriptedServer(scripts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return server, FakeStack(f'http://127.0.0.1:{server.server_address[1]}')

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


def _send(stack, prompts, **config):
  stats = client.BatchStats()
  bodies = [None if p is None else json.dumps({'prompt': p}).encode()
            for p in prompts]
  outcomes = client.send(
      stack, '/v1/completions', bodies, json.loads,
      RequestConfig(retry_backoff_s=0.01, **config), stats)
  return outcomes, stats


def test_success_permanent_failure_and_skipped_elements(serve):
  server, stack = serve({'ok': [200], 'bad': [400]})
  outcomes, stats = _send(stack, ['ok', 'bad', None])
  assert outcomes[0] == {'echo': 'ok'}
  assert isinstance(outcomes[1], RequestFailedError)
  assert outcomes[1].status == 400 and 'scripted 400' in str(outcomes[1])
  assert outcomes[2] is None
  assert (stats.requests, stats.retries, stats.failures) == (2, 0, 1)
  assert server.calls.count('bad') == 1  # a 400 is never retried


@pytest.mark.parametrize('transient', [500, 503, 404, 429])
def test_transient_statuses_are_retried_until_success(serve, transient):
  server, stack = serve({'flaky': [transient, transient, 200]})
  outcomes, stats = _send(stack, ['flaky'])
  assert outcomes == [{'echo': 'flaky'}]
  assert stats.retries == 2 and stats.failures == 0
  assert stack.checks == 2  # the supervisor was asked to look each time


def test_an_element_failing_past_its_retries_is_a_dead_letter(serve):
  server, stack = serve({'down': [503], 'fine': [200]})
  outcomes, stats = _send(stack, ['down', 'fine'], max_request_retries=3)
  assert outcomes[1] == {'echo': 'fine'}
  assert isinstance(outcomes[0], RequestFailedError)
  assert 'still failing after 3 retries' in str(outcomes[0])
  assert server.calls.count('down') == 4


def test_connection_refused_is_transient():
  stack = FakeStack('http://127.0.0.1:9')  # discard port: nothing listens
  outcomes, stats = _send(stack, ['x'], max_request_retries=1)
  assert isinstance(outcomes[0], RequestFailedError)
  assert 'still failing after 1 retries' in str(outcomes[0])
  assert stats.retries == 1


def test_backoff_doubles_up_to_a_cap():
  assert [client.backoff_s(n, 0.5) for n in (1, 2, 3, 8, 20)] == [
      0.5, 1.0, 2.0, 30.0, 30.0]
