"""The GPU suite: real DirectRunner pipelines on dynamo.vllm.

Run with ``test-suites/gpu/run.sh MODEL_DIR`` on a machine with an NVIDIA GPU
and ``ai-dynamo[vllm]``. Skipped unless GPU_SUITE_MODEL names a model.
GPU_SUITE_ENGINE=mocker runs the same checks on Dynamo's CPU mocker (a dry
run of the suite itself); GPU_SUITE_ENGINES=2 runs two engines.
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


MODEL = os.environ.get('GPU_SUITE_MODEL')
ENGINE = os.environ.get('GPU_SUITE_ENGINE', 'vllm')
ENGINES = int(os.environ.get('GPU_SUITE_ENGINES', '0')) or None
ENGINE_KWARGS = json.loads(
    os.environ.get('GPU_SUITE_ENGINE_KWARGS', '{"gpu-memory-utilization": "0.5"}'))
COMPLETIONS, CHATS = 1000, 200
OUT_TOKENS = 128

pytestmark = pytest.mark.skipif(
    not MODEL, reason='GPU_SUITE_MODEL is not set: see test-suites/gpu/run.sh')

# A template with a long preamble: its prompt token counts differ from the
# model's own template by far more than a BOS token could. (No trailing
# newline: Jinja drops one by default.)
TEMPLATE = (
    "You are the GPU suite's assistant. Answer every question in one line.\n"
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n"
    "{% endfor %}### assistant:")


def render(messages) -> str:
  return ("You are the GPU suite's assistant. Answer every question in one "
          "line.\n" + ''.join(f'### {m.role}:\n{m.content}\n' for m in messages) +
          '### assistant:')


def count_tokens(text: str) -> int:
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_file(os.path.join(MODEL, 'tokenizer.json'))
  return len(tokenizer.encode(text, add_special_tokens=False).ids)


def options(**extra):
  chosen = dict(use_dynamo=True, engine=ENGINE, keep_alive_s=0,
                startup_timeout_s=900, num_engines=ENGINES)
  if ENGINE == 'mocker' and ENGINES:
    chosen['num_engines'] = ENGINES
  chosen.update(extra)
  return chosen


def engine_kwargs():
  return dict(ENGINE_KWARGS) if ENGINE == 'vllm' else {'speedup-ratio': '0'}


def run(pipeline_fn):
  pipeline = beam.Pipeline()
  pipeline_fn(pipeline)
  started = time.monotonic()
  pipeline.run().wait_until_finish()
  return time.monotonic() - started


def test_1000_completions(caplog, no_leftovers):
  prompts = [f'Prompt {i}: write a function that adds {i} to its argument.'
             for i in range(COMPLETIONS)]
  handler = VLLMCompletionsModelHandler(MODEL, engine_kwargs(), **options())

  def pipeline(p):
    results = (
        p | beam.Create(prompts)
        | RunInference(handler, inference_args={
            'max_tokens': OUT_TOKENS, 'ignore_eos': True, 'temperature': 0.0})
        | beam.Map(lambda r: (
            r.example, r.inference.usage.completion_tokens,
            r.inference.choices[0].finish_reason, r.inference.usage.prompt_tokens
            > 0, r.model_id)))
    assert_that(results, equal_to([
        (x, OUT_TOKENS, 'length', True, os.path.basename(MODEL)) for x in prompts
    ]))

  seconds = run(pipeline)
  print(f'\n{COMPLETIONS} completions x {OUT_TOKENS} tokens: {seconds:.1f} s '
        '(startup included)')
  caplog.clear()


def test_200_chats_with_a_chat_template(tmp_path, caplog, no_leftovers):
  template = tmp_path / 'template.jinja'
  template.write_text(TEMPLATE)
  conversations = [[
      OpenAIChatMessage('system', 'Be brief.'),
      OpenAIChatMessage('user', f'Question {i}: what is {i} squared?'),
  ] for i in range(CHATS)]
  expected = {c[1].content: count_tokens(render(c)) for c in conversations}
  handler = VLLMChatModelHandler(
      MODEL, str(template), engine_kwargs(), **options())

  def pipeline(p):
    results = (
        p | beam.Create(conversations)
        | RunInference(handler, inference_args={
            'max_tokens': 64, 'ignore_eos': True, 'temperature': 0.0})
        | beam.Map(lambda r: (
            r.example[1].content, r.inference.usage.completion_tokens,
            # The custom template reached the engine: the prompt is exactly
            # the rendered template (a BOS token at most on top).
            r.inference.usage.prompt_tokens - expected[r.example[1].content]
            in (0, 1))))
    assert_that(results, equal_to([
        (c[1].content, 64, True) for c in conversations
    ]))

  seconds = run(pipeline)
  print(f'\n{CHATS} chats x 64 tokens with a chat template: {seconds:.1f} s '
        '(startup included)')
  caplog.clear()


def test_nothing_is_left_on_the_gpu():
  # Each test above waited (no_leftovers) until its own stack's processes,
  # vLLM's EngineCore included, were gone; the driver frees their memory
  # with them.
  if ENGINE != 'vllm':
    return
  apps = subprocess.run(
      ['nvidia-smi', '--query-compute-apps=pid,process_name,used_memory',
       '--format=csv,noheader'], capture_output=True, text=True, check=True)
  assert apps.stdout.strip() == '', f'GPU memory still held:\n{apps.stdout}'
  print('\nnvidia-smi: no process holds GPU memory')
