"""Fixtures and helpers shared by every suite.

Every test runs in a sharing scope of its own (``APACHE_BEAM_DYNAMO_SCOPE``)
and a temporary directory of its own, so its stacks are never shared with
another test's, and the processes and run directories a test looks for are
the ones it started: suites can run side by side (``pytest -n 2``), and a
stray process elsewhere on the machine is none of their business.

Tests synchronize on what the product exposes: a stack's published state
(``StackWatch``), results as they leave RunInference (``FaultAfter``),
Beam metrics, and the frontend's own metrics; never on sleeps.
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Callable, Optional

import apache_beam as beam
import psutil
import pytest
from apache_beam.metrics.metric import MetricsFilter

from apache_beam_dynamo import TINY_MODEL_DIR
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.runtime.protocol import SCOPE_ENV, StackState

from gcs_emulator import gcs  # noqa: F401 (the gs:// fixture, for all suites)

# Command-line fragments of every process a stack can start.
STACK_PROCESS_MARKERS = (
    'apache_beam_dynamo.runtime.supervisor',
    'apache_beam_dynamo.processes.reaper',
    'dynamo.frontend',
    'dynamo.mocker',
    'dynamo.vllm',
    'vllm.entrypoints.openai.api_server',
    'etcdbin/etcd',
    'VLLM::EngineCore',  # vLLM's engine process renames itself
)
RUN_DIR_PREFIX = 'apache-beam-dynamo-'
# Mocker settings for fast tests: no simulated engine time.
FAST_MOCKER = {'speedup-ratio': '0'}
# How long cleanup may take before a test calls it a leak: a stack stops
# once its last user is gone (tests use keep_alive_s=0) and its children get
# shutdown_grace_s (10 s) to exit. Passing runs return as soon as all is gone.
CLEANUP_TIMEOUT_S = 60.0
_BASE_TMP = tempfile.gettempdir()


@pytest.fixture(autouse=True)
def sharing_scope(monkeypatch, tmp_path_factory):
  """This test's own stack scope and temp dir (inherited by every process
  the test starts, so they can be told apart from anybody else's)."""
  tmp_path_factory.getbasetemp()  # pytest's own, before TMPDIR moves
  scope = uuid.uuid4().hex[:16]
  tmp = tempfile.mkdtemp(prefix='abd-test-', dir=_BASE_TMP)
  monkeypatch.setenv(SCOPE_ENV, scope)
  monkeypatch.setenv('TMPDIR', tmp)
  monkeypatch.setattr(tempfile, 'tempdir', tmp)
  yield scope
  # A leak is reported by no_leftovers; the directory itself always goes.
  shutil.rmtree(tmp, ignore_errors=True)


def _in_scope(proc: psutil.Process) -> bool:
  try:
    return proc.environ().get(SCOPE_ENV) == os.environ.get(SCOPE_ENV)
  except psutil.Error:
    return False


def stack_processes() -> list[psutil.Process]:
  """Live stack processes started by this test (in its scope)."""
  found = []
  for proc in psutil.process_iter(['cmdline', 'status']):
    if proc.info['status'] == psutil.STATUS_ZOMBIE:
      continue
    cmdline = ' '.join(proc.info['cmdline'] or ())
    if any(marker in cmdline for marker in STACK_PROCESS_MARKERS) and (
        _in_scope(proc)):
      found.append(proc)
  return found


def describe(processes: list[psutil.Process]) -> list[str]:
  described = []
  for proc in processes:
    try:
      described.append(f'{proc.pid} {" ".join(proc.cmdline())[:160]}')
    except psutil.Error:
      pass
  return described


def stack_pids(marker: str) -> list[int]:
  """Pids of this test's stack processes whose command line has ``marker``."""
  pids = []
  for proc in stack_processes():
    try:
      if marker in ' '.join(proc.cmdline()):
        pids.append(proc.pid)
    except psutil.Error:
      pass
  return pids


def serving_pids() -> list[int]:
  """Pids of this test's etcd, frontend and engine processes."""
  return stack_pids(' -m dynamo.') + stack_pids('etcdbin/etcd') + stack_pids(
      'vllm.entrypoints')


def run_dirs() -> list[str]:
  """This test's stack run directories."""
  return [
      os.path.join(tempfile.gettempdir(), name)
      for name in os.listdir(tempfile.gettempdir())
      if name.startswith(RUN_DIR_PREFIX)
  ]


def stack_leftovers() -> list[str]:
  return describe(stack_processes()) + run_dirs()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str):
  """Polls ``predicate`` (a state the product exposes) until it holds."""
  deadline = time.monotonic() + timeout_s
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out after {timeout_s:.0f} s waiting for {what}')
    time.sleep(0.02)


def wait_for_no_leftovers(timeout_s: float = CLEANUP_TIMEOUT_S) -> list[str]:
  """Waits until this test's stacks are gone; returns what is still there."""
  try:
    wait_until(lambda: not stack_leftovers(), timeout_s, 'stack cleanup')
  except AssertionError:
    pass
  return stack_leftovers()


@pytest.fixture
def no_leftovers():
  """Fails the test if a stack process or run dir outlives it."""
  yield
  left = wait_for_no_leftovers()
  assert not left, f'stack leftovers after the test: {left}'


@pytest.fixture
def tiny_model() -> str:
  return TINY_MODEL_DIR


def model_copies(model: str, directory, names=('model-a', 'model-b')) -> list[str]:
  """Copies of the model directory ``model`` under ``directory``, one per
  name: distinct models for tests of several stacks on one machine."""
  copies = [os.path.join(str(directory), name) for name in names]
  for copy in copies:
    shutil.copytree(model, copy)
  return copies


class Holder:
  """Stands in for a handler copy: a lease lives as long as its holder."""


def mocker_config(model: str = TINY_MODEL_DIR, **overrides) -> StackConfig:
  """A fast mocker stack's config; keyword args override its fields."""
  fields = dict(
      model=model,
      use_dynamo=True,
      engine='mocker',
      engine_args=tuple(FAST_MOCKER.items()),
      keep_alive_s=0,
      startup_timeout_s=60)
  fields.update(overrides)
  return StackConfig(**fields)


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


def run_pipeline(build: Callable[[beam.Pipeline], object]):
  """Builds a DirectRunner pipeline with ``build``, runs it to the end and
  returns its result (for metrics)."""
  pipeline = beam.Pipeline()
  build(pipeline)
  result = pipeline.run()
  result.wait_until_finish()
  return result


def counter(result, name: str) -> int:
  counters = result.metrics().query(MetricsFilter().with_name(name))['counters']
  return sum(c.committed for c in counters)


def gauge(result, name: str) -> int:
  gauges = result.metrics().query(MetricsFilter().with_name(name))['gauges']
  return max((g.committed.value for g in gauges), default=0)


class StackWatch:
  """The test's own lease on a handler's stack (``load_model``, as Beam
  calls it): the stack's pids, and every state it publishes.

  In-process DirectRunner pipelines share this lease's stack, so a test
  can see the component pids to signal and the restarts that followed.
  """
  def __init__(self, handler):
    self._handler = handler
    self.states: list[StackState] = []
    self.lease = handler.load_model()
    self.lease.add_listener(self.states.append)

  @property
  def state(self) -> StackState:
    return self.lease.state

  def pid(self, component: str) -> int:
    return self.state.pids[component]

  def wait_for(self, predicate, timeout_s: float = 120) -> StackState:
    return self.lease.wait_for(predicate, timeout_s)

  def close(self) -> None:
    """Drops the test's lease (the stack stops when no pipeline holds it)."""
    self._handler = self.lease = None


@dataclasses.dataclass
class _FaultRun:
  fault: Optional[Callable[[], None]]
  before: int = 0
  after: int = 0


_FAULT_RUNS: dict[str, _FaultRun] = {}
_FAULT_LOCK = threading.Lock()


class FaultAfter(beam.DoFn):
  """Passes results through; right after the ``after``-th result, in the
  pipeline's own thread, runs ``fault``.

  The fault lands at a point defined by progress: ``after`` results have
  left RunInference and the others have not. ``before`` and ``after_fault``
  count the results on either side (in-process runners only: the state is
  this module's, shared by the DoFn's pickled copies).
  """
  def __init__(self, after: int, fault: Callable[[], None]):
    self.key = uuid.uuid4().hex
    self.threshold = after
    _FAULT_RUNS[self.key] = _FaultRun(fault)

  def process(self, element):
    with _FAULT_LOCK:
      run = _FAULT_RUNS[self.key]
      fault = None
      if run.fault is None:
        run.after += 1
      else:
        run.before += 1
        if run.before >= self.threshold:
          fault, run.fault = run.fault, None
    if fault is not None:
      fault()
    yield element

  @property
  def fired(self) -> bool:
    return _FAULT_RUNS[self.key].fault is None

  @property
  def before(self) -> int:
    return _FAULT_RUNS[self.key].before

  @property
  def after_fault(self) -> int:
    return _FAULT_RUNS[self.key].after


class ProcessWatch:
  """Samples this test's stack processes on a thread; remembers the most
  seen at once."""
  def __init__(self, marker: str):
    self.marker = marker
    self.most = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    while not self._stop.is_set():
      self.most = max(self.most, len(stack_pids(self.marker)))
      self._stop.wait(0.2)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def requests_served() -> int:
  """Successful requests this test's stack frontend has served so far (from
  its /metrics; 0 while there is none)."""
  for pid in stack_pids('dynamo.frontend'):
    try:
      cmdline = psutil.Process(pid).cmdline()
      port = cmdline[cmdline.index('--http-port') + 1]
      with urllib.request.urlopen(
          f'http://127.0.0.1:{port}/metrics', timeout=2) as response:
        text = response.read().decode()
    except (psutil.Error, ValueError, IndexError, OSError):
      return 0
    return int(sum(
        float(m.group(1)) for m in re.finditer(
            r'^dynamo_frontend_requests_total\{[^}]*status="success"[^}]*\} '
            r'(\S+)', text, re.M)))
  return 0


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
