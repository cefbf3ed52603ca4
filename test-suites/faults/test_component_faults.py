"""Faults during a pipeline: each input comes out exactly once.

Each test signals one stack component while a real DirectRunner pipeline
sends prompts through the mocker engine. The fault lands at a point defined
by progress, right after the first batch's results have left RunInference
(``FaultAfter``), and every test checks that results came out on both sides
of it. Restarts are observed through the stack's published state and the
pipeline's Beam metrics, not through logs.
"""

import os
import signal
import threading

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo.errors import StackUnavailableError
from apache_beam_dynamo.runtime.protocol import FAILED, READY, RECOVERING, STOPPED

from conftest import FaultAfter, StackWatch, gauge, run_pipeline

BATCH = 250
PROMPTS = [f'prompt-{i}' for i in range(8 * BATCH)]


def run_prompts(handler, fault: FaultAfter):
  """All prompts through ``handler``; ``fault`` sees the results first."""
  def build(pipeline):
    outputs = (
        pipeline | beam.Create(PROMPTS)
        | RunInference(handler, inference_args={'max_tokens': 4})
        | beam.ParDo(fault)
        | beam.Map(lambda r: (r.example, r.inference.usage.completion_tokens)))
    # equal_to compares as multisets: a lost or duplicated prompt fails.
    assert_that(outputs, equal_to([(p, 4) for p in PROMPTS]))

  return run_pipeline(build)


def signal_component(watch: StackWatch, component: str, signum: int):
  return lambda: os.kill(watch.pid(component), signum)


def kill_and_await_detection(watch: StackWatch, component: str):
  """SIGKILLs ``component`` and returns once the supervisor has published
  the failure, so the rest of the run meets a recovering stack (etcd is not
  on the request path: without the wait the run could end first)."""
  def fault():
    os.kill(watch.pid(component), signal.SIGKILL)
    watch.wait_for(lambda s: s.restarts >= 1)

  return fault


def assert_mid_run(fault: FaultAfter):
  assert fault.fired, 'the fault was never injected'
  assert fault.before == BATCH and fault.after_fault == len(PROMPTS) - BATCH


def batched(make_handler, **options):
  return make_handler(min_batch_size=BATCH, max_batch_size=BATCH, **options)


@pytest.mark.parametrize('component', ['engine', 'frontend', 'etcd'])
def test_sigkill_during_a_pipeline_loses_nothing(component, completions_handler,
                                                 caplog, no_leftovers):
  handler = batched(completions_handler, request_timeout_s=30)
  watch = StackWatch(handler)
  killed = watch.pid(component)
  fault = FaultAfter(BATCH, kill_and_await_detection(watch, component))
  result = run_prompts(handler, fault)
  assert_mid_run(fault)
  assert gauge(result, 'stack_restarts') >= 1
  recovered = watch.state
  assert recovered.phase == READY and recovered.generation >= 2
  assert recovered.last_failure == component
  assert recovered.pids[component] != killed
  print(f'{component} SIGKILL: ready again {recovered.last_recovery_s} s '
        'after the failure was detected')
  watch.close()
  caplog.clear()


def test_sigstop_longer_than_the_request_timeout(completions_handler, caplog,
                                                 no_leftovers):
  # The stopped engine is never resumed: the watchdog must notice that it
  # stopped answering, and replace it (stopping a stopped group kills it).
  handler = batched(completions_handler, request_timeout_s=5)
  watch = StackWatch(handler)
  fault = FaultAfter(BATCH, signal_component(watch, 'engine', signal.SIGSTOP))
  result = run_prompts(handler, fault)
  assert_mid_run(fault)
  assert gauge(result, 'stack_restarts') >= 1
  assert any(
      s.phase == RECOVERING and 'stopped answering' in (s.error or '')
      for s in watch.states)
  assert watch.state.phase == READY and watch.state.last_failure == 'engine'
  print(f'engine SIGSTOP: ready again {watch.state.last_recovery_s} s after '
        'the failure was detected')
  watch.close()
  caplog.clear()


def test_spent_restart_budget_fails_fast_and_cleanly(completions_handler,
                                                     caplog, no_leftovers):
  # After the first batch, every engine the stack starts is killed as soon
  # as it is ready; the third failure exceeds max_restarts=2. Requests wait
  # for the stack rather than spend their own retries.
  handler = batched(
      completions_handler, max_restarts=2, request_timeout_s=30,
      max_request_retries=1000)
  watch = StackWatch(handler)
  killer_done = threading.Event()

  def kill_every_engine():
    killed = set()
    while True:
      state = watch.wait_for(
          lambda s: s.phase in (FAILED, STOPPED) or
          (s.phase == READY and s.pids.get('engine') not in killed))
      if state.phase != READY:
        break
      killed.add(state.pids['engine'])
      os.kill(state.pids['engine'], signal.SIGKILL)
    killer_done.set()

  fault = FaultAfter(
      BATCH, lambda: threading.Thread(target=kill_every_engine,
                                      daemon=True).start())
  with pytest.raises(StackUnavailableError, match='giving up after 2 restarts'):
    run_prompts(handler, fault)
  assert fault.fired and fault.before == BATCH
  assert killer_done.wait(60)
  assert watch.state.phase == FAILED and watch.state.restarts == 2
  watch.close()
  caplog.clear()  # the failure's traceback references the pipeline's DoFns
