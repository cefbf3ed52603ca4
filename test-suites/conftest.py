"""Fixtures shared by every suite: the tiny model, handler factories, and the
check that no stack process, port or directory outlives a test."""

import glob
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from apache_beam_dynamo import TINY_MODEL_DIR

# Command-line fragments of every process a stack can start.
STACK_PROCESS_MARKERS = (
    'apache_beam_dynamo.supervisor',
    'apache_beam_dynamo.reaper',
    'dynamo.frontend',
    'dynamo.mocker',
    'dynamo.vllm',
    'vllm.entrypoints.openai.api_server',
    'etcdbin/etcd',
)
RUN_DIR_GLOB = os.path.join(tempfile.gettempdir(), 'apache-beam-dynamo-*')
# Mocker settings for fast tests: no simulated engine time.
FAST_MOCKER = {'speedup-ratio': '0'}


def stack_processes() -> list[str]:
  """'pid cmdline' of every live stack process on this machine."""
  found = []
  for proc in psutil.process_iter(['pid', 'cmdline', 'status']):
    try:
      cmdline = ' '.join(proc.info['cmdline'] or ())
      if proc.info['status'] == psutil.STATUS_ZOMBIE:
        continue
    except psutil.Error:
      continue
    if any(marker in cmdline for marker in STACK_PROCESS_MARKERS):
      found.append(f'{proc.info["pid"]} {cmdline[:160]}')
  return found


def stack_pids(marker: str) -> list[int]:
  """Pids of live stack processes whose command line contains ``marker``."""
  return [
      int(line.split()[0]) for line in stack_processes() if marker in line
  ]


def requests_served() -> int:
  """Successful requests the running stack's frontend has served so far
  (from its /metrics; 0 while there is none)."""
  import re
  import urllib.request
  for line in stack_processes():
    if 'dynamo.frontend' in line and '--http-port' in line:
      port = line.split('--http-port')[1].split()[0]
      try:
        with urllib.request.urlopen(
            f'http://127.0.0.1:{port}/metrics', timeout=2) as response:
          text = response.read().decode()
      except OSError:
        return 0
      return int(sum(
          float(m.group(1)) for m in re.finditer(
              r'^dynamo_frontend_requests_total\{[^}]*status="success"[^}]*\} '
              r'(\S+)', text, re.M)))
  return 0


def stack_leftovers() -> list[str]:
  return stack_processes() + glob.glob(RUN_DIR_GLOB)


def wait_for_no_leftovers(timeout_s: float) -> list[str]:
  deadline = time.monotonic() + timeout_s
  while True:
    left = stack_leftovers()
    if not left or time.monotonic() > deadline:
      return left
    time.sleep(0.1)


@pytest.fixture
def no_leftovers():
  """Fails the test if a stack process or run dir is still there afterwards.

  Stacks stop once their last user is gone plus ``keep_alive_s`` (tests use
  0 or the 2 s default), so a short grace period is allowed.
  """
  before = stack_leftovers()
  assert not before, f'leftovers from an earlier test: {before}'
  yield
  left = wait_for_no_leftovers(timeout_s=20.0)
  assert not left, f'stack leftovers after the test: {left}'


@pytest.fixture
def tiny_model() -> str:
  return TINY_MODEL_DIR


@pytest.fixture
def completions_handler(tiny_model):
  """Builds a mocker-backed completions handler; keyword args override."""
  from apache_beam_dynamo import VLLMCompletionsModelHandler

  def build(**overrides):
    kwargs = dict(use_dynamo=True, engine='mocker', keep_alive_s=0)
    kwargs.update(overrides)
    server_kwargs = kwargs.pop('vllm_server_kwargs', FAST_MOCKER)
    return VLLMCompletionsModelHandler(tiny_model, server_kwargs, **kwargs)

  return build


@pytest.fixture
def chat_handler(tiny_model):
  """Builds a mocker-backed chat handler; keyword args override."""
  from apache_beam_dynamo import VLLMChatModelHandler

  def build(chat_template_path=None, **overrides):
    kwargs = dict(use_dynamo=True, engine='mocker', keep_alive_s=0)
    kwargs.update(overrides)
    server_kwargs = kwargs.pop('vllm_server_kwargs', FAST_MOCKER)
    return VLLMChatModelHandler(
        tiny_model, chat_template_path, server_kwargs, **kwargs)

  return build


class ProcessWatch:
  """Samples stack processes on a thread; remembers the most seen at once."""
  def __init__(self, marker: str):
    self.marker = marker
    self.most = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    while not self._stop.is_set():
      self.most = max(
          self.most, sum(self.marker in line for line in stack_processes()))
      self._stop.wait(0.2)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def pipeline_script(model: str, prompts: int, *, workers: int = 0,
                    max_tokens: int = 2, output: str = '', speedup: str = '0',
                    **handler_options) -> str:
  """Source of a standalone pipeline over the mocker: ``prompts`` prompts
  p0, p1, ... through VLLMCompletionsModelHandler, on the in-process
  DirectRunner or, with ``workers``, on that many SDK worker processes;
  writes 'prompt completion_tokens' lines to ``output`` if given."""
  options = (f"['--direct_running_mode=multi_processing', "
             f"'--direct_num_workers={workers}']" if workers else '[]')
  sink = (f"| beam.Map(lambda r: '%s %d' % (r.example, "
          f"r.inference.usage.completion_tokens)) "
          f"| beam.io.WriteToText({output!r})" if output else '')
  return f'''
import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam_dynamo import VLLMCompletionsModelHandler
handler = VLLMCompletionsModelHandler(
    {model!r}, {{'speedup-ratio': {speedup!r}}}, use_dynamo=True,
    engine='mocker', **{handler_options!r})
with beam.Pipeline(options=PipelineOptions({options})) as p:
  _ = (p | beam.Create([f'p{{i}}' for i in range({prompts})])
         | beam.Reshuffle()
         | RunInference(handler, inference_args={{'max_tokens': {max_tokens}}})
         {sink})
print('done')
'''


def output_lines(directory, prefix: str) -> list[str]:
  """Every line of the files ``prefix*`` in ``directory``."""
  lines = []
  for name in os.listdir(directory):
    if name.startswith(prefix):
      with open(os.path.join(directory, name)) as f:
        lines += f.read().splitlines()
  return lines


def run_python(code: str, timeout_s: float = 120, env=None):
  """Runs ``code`` in a fresh interpreter; returns the CompletedProcess."""
  return subprocess.run([sys.executable, '-c', code],
                        capture_output=True,
                        text=True,
                        timeout=timeout_s,
                        env=env)
