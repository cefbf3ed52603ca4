"""Several engines behind one frontend, and one stack shared by many SDK
processes (CPU lane: mocker engines)."""

import os
import random
import signal

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo.runtime.protocol import RECOVERING

from conftest import (
    FaultAfter, ProcessWatch, StackWatch, output_lines, pipeline_script,
    run_pipeline, run_python)

WORKER_ID = {'max_tokens': 2, 'nvext': {'extra_fields': ['worker_id']}}


def decode_worker(result):
  return result.inference.model_extra['nvext']['worker_id']['decode_worker_id']


def test_requests_spread_over_three_engines(completions_handler, no_leftovers):
  handler = completions_handler(num_engines=3)

  def pipeline(p):
    workers = (
        p | beam.Create([f'p{i}' for i in range(300)])
        | RunInference(handler, inference_args=WORKER_ID)
        | beam.Map(decode_worker)
        | beam.Distinct()
        | beam.combiners.Count.Globally())
    assert_that(workers, equal_to([3]))

  with ProcessWatch('dynamo.mocker') as engines, ProcessWatch(
      'dynamo.frontend') as frontends:
    run_pipeline(pipeline)
  assert (engines.most, frontends.most) == (3, 1)


def test_kv_aware_routing_serves_with_two_engines(completions_handler,
                                                  no_leftovers):
  handler = completions_handler(num_engines=2, router_mode='kv')

  def pipeline(p):
    out = (p | beam.Create([f'shared prefix {i % 5}' for i in range(200)])
           | RunInference(handler, inference_args={'max_tokens': 2})
           | beam.Map(lambda r: r.inference.usage.completion_tokens))
    assert_that(out, equal_to([2] * 200))

  run_pipeline(pipeline)


def test_killing_one_engine_loses_nothing_while_the_others_serve(
    completions_handler, caplog, no_leftovers):
  batch = 250
  prompts = [f'prompt-{i}' for i in range(8 * batch)]
  handler = completions_handler(
      num_engines=3, min_batch_size=batch, max_batch_size=batch)
  watch = StackWatch(handler)
  victim = random.choice(['engine-0', 'engine-1', 'engine-2'])
  print(f'killing {victim}')
  fault = FaultAfter(batch, lambda: os.kill(watch.pid(victim), signal.SIGKILL))

  def pipeline(p):
    out = (p | beam.Create(prompts)
           | RunInference(handler, inference_args={'max_tokens': 4})
           | beam.ParDo(fault)
           | beam.Map(lambda r: r.example))
    assert_that(out, equal_to(prompts))

  run_pipeline(pipeline)
  assert fault.fired and fault.after_fault == len(prompts) - batch
  # The engine was replaced, and the other engines kept serving: clients
  # were never told to wait.
  state = watch.wait_for(lambda s: s.generation >= 2)
  assert state.last_failure == victim and state.restarts == 1
  assert RECOVERING not in {s.phase for s in watch.states}
  watch.close()
  caplog.clear()


def test_four_sdk_processes_share_one_stack(tiny_model, tmp_path, no_leftovers):
  code = pipeline_script(
      tiny_model, prompts=400, workers=4, max_tokens=3,
      output=str(tmp_path / 'out'), num_engines=2, max_batch_size=10)
  # (Workers that start at once may each launch a supervisor; all but the
  # first to bind the socket exit before starting anything.)
  watches = [ProcessWatch(marker) for marker in (
      'etcdbin/etcd', 'dynamo.frontend', 'dynamo.mocker')]
  for watch in watches:
    watch.__enter__()
  try:
    finished = run_python(code, timeout_s=300)
  finally:
    for watch in watches:
      watch.__exit__(None, None, None)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert [w.most for w in watches] == [1, 1, 2]  # etcd, frontend, engines
  lines = output_lines(tmp_path, 'out')
  assert sorted(lines) == sorted(f'p{i} 3' for i in range(400))
