"""Faults during a 5,000-prompt pipeline: each input comes out exactly once.

Each test kills (or stops) one stack component at a random moment while a
real DirectRunner pipeline sends 5,000 prompts through the mocker engine.
The seed of the moment is printed, so a failure can be replayed.
"""

import os
import random
import re
import signal
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from conftest import requests_served, stack_pids

PROMPTS = [f'prompt-{i}' for i in range(5000)]
MARKERS = {
    'engine': 'dynamo.mocker',
    'frontend': 'dynamo.frontend',
    'etcd': 'etcdbin/etcd',
}
_RECOVERED = re.compile(r'Recovered from the (\w+) failure in ([\d.]+) s')


class Fault(threading.Thread):
  """Signals the newest process of a component at a random moment of the
  run (after 10-70% of the prompts were served); optionally resumes it
  later (for SIGSTOP)."""
  def __init__(self, marker, signum, seed, resume_after_s=None):
    super().__init__(daemon=True)
    self.marker, self.signum, self.resume_after_s = marker, signum, resume_after_s
    self.rng = random.Random(seed)
    self.injected_at = None

  def run(self):
    threshold = int(len(PROMPTS) * self.rng.uniform(0.1, 0.7))
    deadline = time.monotonic() + 120
    while requests_served() < threshold and time.monotonic() < deadline:
      time.sleep(0.05)
    pids = stack_pids(self.marker)
    if not pids:
      return
    os.kill(pids[-1], self.signum)
    self.injected_at = time.time()
    if self.resume_after_s:
      time.sleep(self.resume_after_s)
      try:
        os.kill(pids[-1], signal.SIGCONT)
      except ProcessLookupError:
        pass  # the watchdog already replaced it


def run_prompts(handler):
  pipeline = beam.Pipeline()
  outputs = (
      pipeline | beam.Create(PROMPTS)
      | RunInference(handler, inference_args={'max_tokens': 4})
      | beam.Map(lambda r: (r.example, r.inference.usage.completion_tokens)))
  # equal_to compares as multisets: a lost or duplicated prompt fails.
  assert_that(outputs, equal_to([(p, 4) for p in PROMPTS]))
  result = pipeline.run()
  result.wait_until_finish()
  return result


def gauge(result, name):
  gauges = result.metrics().query(MetricsFilter().with_name(name))['gauges']
  return max((g.committed.value for g in gauges), default=0)


def recovery(caplog, fault):
  """(component, detection-to-ready s, fault-to-ready s) of the first
  recovery the supervisor logged."""
  for record in caplog.records:
    match = _RECOVERED.search(record.getMessage())
    if match:
      return (match.group(1), float(match.group(2)),
              round(record.created - fault.injected_at, 1))
  raise AssertionError('no recovery was logged')


@pytest.mark.parametrize('component', ['engine', 'frontend', 'etcd'])
def test_sigkill_during_a_pipeline_loses_nothing(component, completions_handler,
                                                 caplog, no_leftovers):
  seed = random.randrange(1 << 30)
  print(f'seed={seed}')
  fault = Fault(MARKERS[component], signal.SIGKILL, seed)
  fault.start()
  result = run_prompts(completions_handler(request_timeout_s=30))
  fault.join()
  assert fault.injected_at is not None, 'the fault was never injected'
  assert gauge(result, 'stack_restarts') >= 1
  assert any(f'Restarting {component}' in m for m in caplog.messages)
  failed, restart_s, total_s = recovery(caplog, fault)
  assert failed == component
  print(f'{component} SIGKILL: ready again {total_s} s after the kill '
        f'({restart_s} s after detection)')


def test_sigstop_longer_than_the_request_timeout(completions_handler, caplog,
                                                 no_leftovers):
  seed = random.randrange(1 << 30)
  print(f'seed={seed}')
  fault = Fault(MARKERS['engine'], signal.SIGSTOP, seed, resume_after_s=12)
  fault.start()
  result = run_prompts(completions_handler(request_timeout_s=5))
  fault.join()
  assert fault.injected_at is not None
  assert gauge(result, 'stack_restarts') >= 1
  assert any('stopped answering' in m for m in caplog.messages)
  _, restart_s, total_s = recovery(caplog, fault)
  print(f'engine SIGSTOP: ready again {total_s} s after the stop '
        f'({restart_s} s after detection)')


def test_spent_restart_budget_fails_fast_and_cleanly(completions_handler,
                                                     caplog, no_leftovers):
  stop = threading.Event()

  def kill_every_engine():
    # After the first start, every new engine dies at once.
    deadline = time.monotonic() + 120
    while not stack_pids('dynamo.mocker') and time.monotonic() < deadline:
      time.sleep(0.05)
    time.sleep(4)
    while not stop.is_set():
      for pid in stack_pids('dynamo.mocker'):
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      time.sleep(0.05)

  killer = threading.Thread(target=kill_every_engine, daemon=True)
  killer.start()
  started = time.monotonic()
  try:
    with pytest.raises(Exception, match='giving up after 2 restarts'):
      run_prompts(completions_handler(max_restarts=2, request_timeout_s=30))
  finally:
    stop.set()
    killer.join()
  assert time.monotonic() - started < 120
  caplog.clear()  # the failure's traceback references the pipeline's DoFns
