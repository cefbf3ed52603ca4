"""The example CLI with every path on gs://: input, chat template and output.

GCS is a local emulator (``gcp-storage-emulator``, in this process, on a free
loopback port); Beam's own GCS filesystem talks to it through
``STORAGE_EMULATOR_HOST``, so this exercises the package's ``apache-beam[gcp]``
install with no Google Cloud access. Beam's credential lookup is switched off
in the test process (monkeypatch) and in the example's processes (a
sitecustomize on their PYTHONPATH, test-suites/support/no_gcp_credentials).
"""

import contextlib
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.filesystems import FileSystems
from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

SUITES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(SUITES)
EXAMPLE = os.path.join(REPO, 'examples', 'vllm_text_completion.py')
NO_CREDENTIALS = os.path.join(SUITES, 'support', 'no_gcp_credentials')
BUCKET = 'apache-beam-dynamo-test'
# A template whose preamble alone is more tokens than any prompt here with
# the tiny model's own template (its tokenizer: one token per byte), so the
# prompt token counts show which template the engine used.
PREAMBLE = 'gs-template ' * 40
TEMPLATE = (PREAMBLE + "{% for m in messages %}{{ m['role'] }}: "
            "{{ m['content'] }}\n{% endfor %}")
INPUT_LINES = [
    'Hello there',
    '{"prompt": "json prompt"}',
    '{"messages": [{"role": "user", "content": "hi"}]}',
    '{"bad json',
]
GOOD = ['Hello there', 'json prompt', 'hi']


class GcsEmulator:
  """gcp-storage-emulator's request handler and in-memory storage, served on
  a port the OS picks on 127.0.0.1, by a thread this object joins."""
  def __init__(self, bucket: str):
    storage = Storage(use_memory_fs=True)
    buckets.create_bucket(bucket, storage)
    self._httpd = http.server.HTTPServer(
        ('127.0.0.1', 0), functools.partial(RequestHandler, storage))
    self.port = self._httpd.server_address[1]
    self.url = f'http://127.0.0.1:{self.port}'
    self._thread = threading.Thread(
        target=self._httpd.serve_forever, name='gcs-emulator', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def answers(self) -> bool:
    try:
      with urllib.request.urlopen(
          f'{self.url}/storage/v1/b/{BUCKET}', timeout=5) as response:
        return response.status == 200
    except OSError:
      return False

  def stop(self) -> None:
    self._httpd.shutdown()  # returns once serve_forever has stopped
    self._httpd.server_close()
    self._thread.join(timeout=10)

  def port_is_closed(self) -> bool:
    with contextlib.closing(socket.socket()) as probe:
      return probe.connect_ex(('127.0.0.1', self.port)) != 0


@pytest.fixture
def gcs(monkeypatch):
  """A fresh emulator with one bucket; this process's Beam talks to it with
  no credentials. Yields the environment for the example's process."""
  emulator = GcsEmulator(BUCKET)
  emulator.start()
  try:
    deadline = time.monotonic() + 30
    while not emulator.answers():
      assert time.monotonic() < deadline, 'the GCS emulator never answered'
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', emulator.url)
    monkeypatch.setattr(auth._Credentials, '_credentials_init', True)
    monkeypatch.setattr(auth._Credentials, '_credentials', None)
    pythonpath = os.pathsep.join(
        p for p in (NO_CREDENTIALS, os.environ.get('PYTHONPATH')) if p)
    yield dict(os.environ, PYTHONPATH=pythonpath)
  finally:
    emulator.stop()
  assert not emulator._thread.is_alive(), 'the emulator thread outlived it'
  assert emulator.port_is_closed(), f'port {emulator.port} still open'


def write_gcs(path: str, text: str) -> None:
  with FileSystems.create(path) as f:
    f.write(text.encode('utf-8'))


def read_gcs_jsonl(path: str) -> list:
  with FileSystems.open(path) as f:
    return [json.loads(line) for line in f.read().decode().splitlines()
            if line.strip()]


def test_input_template_and_output_on_gcs(gcs, no_leftovers):
  base = f'gs://{BUCKET}/example'
  write_gcs(f'{base}/in/prompts.txt', '\n'.join(INPUT_LINES) + '\n')
  write_gcs(f'{base}/template.jinja', TEMPLATE)
  output = f'{base}/out/results.jsonl'
  assert not FileSystems.exists(output)

  finished = subprocess.run([
      sys.executable, EXAMPLE, '--use_dynamo', '--engine', 'mocker', '--chat',
      '--input', f'{base}/in/*.txt', '--chat_template',
      f'{base}/template.jinja', '--output', output, '--max_tokens', '3'
  ],
                            capture_output=True,
                            text=True,
                            timeout=300,
                            cwd=REPO,
                            env=gcs)
  assert finished.returncode == 0, finished.stderr[-3000:]

  results = read_gcs_jsonl(output)
  assert sorted(r['input'][-1]['content'] for r in results) == sorted(GOOD)
  for record in results:
    assert record['finish_reason'] == 'length'
    assert record['completion_tokens'] == 3
    # The gs:// template's preamble reached the engine.
    assert record['prompt_tokens'] > len(PREAMBLE), record
  dead = read_gcs_jsonl(output + '.dead_letter')
  assert [(d['input'], d['stage']) for d in dead] == [('{"bad json', 'input')]
  assert f'{len(GOOD)} results, 1 failed' in finished.stdout
  assert f'Results: {output}' in finished.stdout
