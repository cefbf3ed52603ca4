"""Several handlers on one GPU (issue 13), on dynamo.vllm.

Run with ``test-suites/gpu/run.sh MODEL_DIR -k sharing`` (or the whole GPU
suite). Two copies of the model directory stand for two models:
- at gpu-memory-utilization 0.4 each, on GPU 0, both run side by side;
- at the defaults (0.92 each) the second fails within seconds, naming the
  first, and launches no engine;
- a completions and a chat handler (no template) of one model, differing in
  supervision settings, run one engine.
GPU_SUITE_ENGINE=mocker dry-runs the same checks on the CPU (the mocker
declares gpus=[0] for the ledger).
"""

import json
import os
import subprocess
import time

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import (
    OpenAIChatMessage, VLLMChatModelHandler, VLLMCompletionsModelHandler)

from conftest import ProcessWatch, model_copies, wait_for_no_leftovers

MODEL = os.environ.get('GPU_SUITE_MODEL')
ENGINE = os.environ.get('GPU_SUITE_ENGINE', 'vllm')
ENGINE_MARKER = 'dynamo.vllm' if ENGINE == 'vllm' else 'dynamo.mocker'
PROMPTS = 200

pytestmark = pytest.mark.skipif(
    not MODEL, reason='GPU_SUITE_MODEL is not set: see test-suites/gpu/run.sh')


def flags(**extra):
  """Engine flags: the mocker's speed, GPU_SUITE_ENGINE_KWARGS (e.g.
  '{"enforce-eager": null}'), then the test's own (memory shares)."""
  chosen = {} if ENGINE == 'vllm' else {'speedup-ratio': '0'}
  chosen.update(json.loads(os.environ.get('GPU_SUITE_ENGINE_KWARGS', '{}')))
  chosen.update(extra)
  return chosen


def options(**extra):
  chosen = dict(use_dynamo=True, engine=ENGINE, keep_alive_s=0,
                startup_timeout_s=900, gpus=[0])
  chosen.update(extra)
  return chosen


def completions(p, label, handler):
  name = handler.stack_config.served_model_name
  results = (
      p | f'{label}Prompts' >> beam.Create(
          [f'{label} prompt {i}' for i in range(PROMPTS)])
      | f'{label}Run' >> RunInference(
          handler, inference_args={'max_tokens': 16, 'ignore_eos': True})
      | f'{label}Check' >> beam.Map(
          lambda r: (r.model_id, r.inference.usage.completion_tokens)))
  assert_that(results, equal_to([(name, 16)] * PROMPTS), label=f'{label}Ok')


def run(pipeline_fn):
  pipeline = beam.Pipeline()
  pipeline_fn(pipeline)
  pipeline.run().wait_until_finish()


def assert_nothing_left():
  # (Run without --log-cli-level=DEBUG: pytest then keeps Beam's DEBUG
  # records, whose arguments reference the DoFns and so the handler copies
  # holding the leases, until the test ends; reproduced on the mocker.)
  started = time.monotonic()
  left = wait_for_no_leftovers(timeout_s=60)
  print(f'\nstacks gone {time.monotonic() - started:.1f} s after the pipeline')
  assert not left, f'stack processes left: {left}'
  if ENGINE == 'vllm':
    apps = subprocess.run(
        ['nvidia-smi', '--query-compute-apps=pid,used_memory',
         '--format=csv,noheader'], capture_output=True, text=True, check=True)
    assert apps.stdout.strip() == '', f'GPU memory still held:\n{apps.stdout}'


def test_sharing_two_models_at_0_4_each_run_side_by_side(tmp_path):
  handlers = [
      VLLMCompletionsModelHandler(
          model, flags(**{'gpu-memory-utilization': '0.4'}), **options())
      for model in model_copies(MODEL, tmp_path)
  ]
  with ProcessWatch(ENGINE_MARKER) as engines:
    run(lambda p: [completions(p, f'M{i}', h) for i, h in enumerate(handlers)])
  assert engines.most == 2
  assert_nothing_left()


def test_sharing_two_models_at_defaults_fail_fast(tmp_path):
  handlers = [
      VLLMCompletionsModelHandler(model, flags(), **options())
      for model in model_copies(MODEL, tmp_path)
  ]
  started = time.monotonic()
  with ProcessWatch(ENGINE_MARKER) as engines:
    with pytest.raises(Exception) as failure:
      run(lambda p: [completions(p, f'M{i}', h) for i, h in enumerate(handlers)])
  seconds = time.monotonic() - started
  message = str(failure.value)
  print(f'\nfailed after {seconds:.1f} s (the first engine load included): '
        f'{message[:600]}')
  assert 'no room on GPU 0' in message, message
  assert "'gpu-memory-utilization' in vllm_server_kwargs" in message
  assert 'Free memory on device' not in message  # not vLLM's own OOM check
  assert engines.most == 1
  assert_nothing_left()


def test_sharing_completions_and_chat_of_one_model_run_one_engine():
  completion = VLLMCompletionsModelHandler(
      MODEL, flags(), **options(startup_timeout_s=600))
  chat = VLLMChatModelHandler(
      MODEL, None, flags(), **options(max_restarts=1))

  def pipeline(p):
    completions(p, 'C', completion)
    kinds = (
        p | 'Chats' >> beam.Create(
            [[OpenAIChatMessage('user', f'q{i}')] for i in range(PROMPTS)])
        | 'Chat' >> RunInference(chat, inference_args={'max_tokens': 8})
        | 'Kind' >> beam.Map(lambda r: r.inference.object))
    assert_that(kinds, equal_to(['chat.completion'] * PROMPTS), label='ChOk')

  with ProcessWatch(ENGINE_MARKER) as engines:
    run(pipeline)
  assert engines.most == 1
  assert_nothing_left()
