"""A local GCS for tests: gcp-storage-emulator's request handler and
in-memory storage on a free loopback port, and the ``gcs`` fixture (made
visible to every suite by conftest)."""

import contextlib
import functools
import http.server
import os
import socket
import threading
import time
import urllib.request

import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.filesystems import FileSystems

SUITES = os.path.dirname(os.path.abspath(__file__))
NO_CREDENTIALS = os.path.join(SUITES, 'support', 'no_gcp_credentials')
GCS_BUCKET = 'apache-beam-dynamo-test'


class GcsEmulator:
  """gcp-storage-emulator's request handler and in-memory storage, served on
  a port the OS picks on 127.0.0.1, by a thread this object joins."""
  def __init__(self, bucket: str):
    # imported here: the GPU suite's machine has no emulator installed
    # pylint: disable=import-outside-toplevel
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage
    self.bucket = bucket
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
          f'{self.url}/storage/v1/b/{self.bucket}', timeout=5) as response:
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
  """A fresh GCS emulator with one bucket (``GCS_BUCKET``). This process's
  Beam, and every process it starts (supervisors too), talk to it with no
  credentials: ``STORAGE_EMULATOR_HOST``, and Beam's credential lookup off
  (monkeypatched here; a sitecustomize on ``PYTHONPATH`` for subprocesses).
  Yields the environment for subprocesses."""
  emulator = GcsEmulator(GCS_BUCKET)
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
    monkeypatch.setenv('PYTHONPATH', pythonpath)
    yield dict(os.environ)
  finally:
    emulator.stop()
  assert not emulator._thread.is_alive(), 'the emulator thread outlived it'
  assert emulator.port_is_closed(), f'port {emulator.port} still open'


def write_gcs(path: str, text: str) -> None:
  with FileSystems.create(path) as f:
    f.write(text.encode('utf-8'))
