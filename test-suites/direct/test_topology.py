"""Several engines behind one frontend, and one stack shared by many SDK
processes (CPU lane: mocker engines)."""

import os
import random
import signal
import threading
import time

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from conftest import (
    ProcessWatch, output_lines, pipeline_script, requests_served, run_python,
    stack_pids)

WORKER_ID = {'max_tokens': 2, 'nvext': {'extra_fields': ['worker_id']}}


def decode_worker(result):
  return result.inference.model_extra['nvext']['worker_id']['decode_worker_id']


def run(pipeline_fn):
  pipeline = beam.Pipeline()
  pipeline_fn(pipeline)
  pipeline.run().wait_until_finish()


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
    run(pipeline)
  assert (engines.most, frontends.most) == (3, 1)


def test_kv_aware_routing_serves_with_two_engines(completions_handler,
                                                  no_leftovers):
  handler = completions_handler(num_engines=2, router_mode='kv')

  def pipeline(p):
    out = (p | beam.Create([f'shared prefix {i % 5}' for i in range(200)])
           | RunInference(handler, inference_args={'max_tokens': 2})
           | beam.Map(lambda r: r.inference.usage.completion_tokens))
    assert_that(out, equal_to([2] * 200))

  run(pipeline)


def test_killing_one_engine_loses_nothing_while_the_others_serve(
    completions_handler, caplog, no_leftovers):
  prompts = [f'prompt-{i}' for i in range(3000)]
  seed = random.randrange(1 << 30)
  print(f'seed={seed}')

  def kill_one_engine():
    rng = random.Random(seed)
    threshold = int(len(prompts) * rng.uniform(0.1, 0.7))
    deadline = time.monotonic() + 120
    while requests_served() < threshold and time.monotonic() < deadline:
      time.sleep(0.05)
    os.kill(rng.choice(stack_pids('dynamo.mocker')), signal.SIGKILL)

  killer = threading.Thread(target=kill_one_engine, daemon=True)
  killer.start()

  def pipeline(p):
    out = (p | beam.Create(prompts)
           | RunInference(completions_handler(num_engines=3),
                          inference_args={'max_tokens': 4})
           | beam.Map(lambda r: r.example))
    assert_that(out, equal_to(prompts))

  run(pipeline)
  killer.join()
  assert any('Restarting engine-' in m for m in caplog.messages)
  # The other engines kept serving: clients were never told to wait.
  assert not any('"phase": "recovering"' in m for m in caplog.messages)


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
