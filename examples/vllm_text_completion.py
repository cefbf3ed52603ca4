#!/usr/bin/env python3
"""LLM batch inference with Apache Beam on vLLM or an embedded NVIDIA Dynamo.

apache-beam's ``vllm_text_completion`` example with the same flags, plus an
input file, a CPU engine, a dead-letter output and a run summary::

  # CPU only: Dynamo's mocker engine and the packaged tiny model
  python examples/vllm_text_completion.py --use_dynamo --engine mocker \\
      --input prompts.txt --output out/results.jsonl

  # GPU: dynamo.vllm (drop --use_dynamo for vLLM's own server)
  python examples/vllm_text_completion.py --use_dynamo \\
      --model Qwen/Qwen3-0.6B --input gs://bucket/prompts.jsonl \\
      --output gs://bucket/out/results.jsonl --runner DataflowRunner ...

Input: a text file (or glob, on any Beam filesystem) with one prompt per
line, or JSONL whose records hold a "prompt" string or a "messages" list,
and optionally request parameters of their own (``{"prompt": "Hi",
"max_tokens": 8, "temperature": 0}``), which override the flags for that
record; a record with an unknown or mistyped parameter is a dead letter.
Output: JSONL, one record per input with the generated text, finish_reason
and token counts; inputs that failed go to ``<output>.dead_letter`` with the
reason. Every standard Beam pipeline option is accepted.
"""

import argparse
import json
import logging
import sys
import time
from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from apache_beam_dynamo import (
    TINY_MODEL_DIR, OpenAIChatMessage, VLLMChatModelHandler,
    VLLMCompletionsModelHandler)

NAMESPACE = 'vllm_text_completion'

COMPLETION_EXAMPLES = [
    'Hello, my name is',
    'The president of the United States is',
    'The capital of France is',
    'The future of AI is',
    'John cena is',
]
CHAT_EXAMPLES = [
    [
        OpenAIChatMessage('user', 'What is an example of a type of penguin?'),
        OpenAIChatMessage('assistant', 'Emperor penguin is a type of penguin.'),
        OpenAIChatMessage('user', 'Tell me about them'),
    ],
    [OpenAIChatMessage('user', 'What colors are in the rainbow?')],
    [OpenAIChatMessage('user', 'Who is the president of the United States?')],
    [OpenAIChatMessage('user', 'What state is Fargo in?')],
    [OpenAIChatMessage('user', 'How many fish are in the ocean?')],
]


def parse_known_args(argv):
  """Example flags; everything else goes to Beam's PipelineOptions."""
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      epilog='All other flags are Beam pipeline options, e.g. --runner '
      'DataflowRunner --project P --region R --sdk_container_image IMAGE '
      '--dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;'
      'install-nvidia-driver". See the README for T4 and L4 settings.')
  parser.add_argument(
      '--model',
      default=None,
      help='Hub id or local directory of the model. Default: '
      'facebook/opt-125m, or the packaged tiny model with --engine mocker.')
  parser.add_argument(
      '--input',
      default=None,
      help='Text file or glob (one prompt per line) or JSONL with "prompt" or '
      '"messages" per record, plus any request parameters (max_tokens, '
      'temperature, guided_json, ...) that override the flags for that '
      'record, on any Beam filesystem. Default: five built-in examples.')
  parser.add_argument(
      '--output',
      required=True,
      help='Where to write the JSONL results; failed inputs go to '
      '<output>.dead_letter.')
  parser.add_argument(
      '--chat',
      action='store_true',
      help='Use the chat handler: plain-text lines become one user message.')
  parser.add_argument(
      '--chat_template',
      default=None,
      help='Jinja chat template (local or gs://...) for --chat.')
  parser.add_argument(
      '--use_dynamo',
      action='store_true',
      help='Serve through an embedded NVIDIA Dynamo stack (etcd, '
      "dynamo.frontend, an engine) instead of vLLM's own server.")
  parser.add_argument(
      '--engine',
      choices=('vllm', 'mocker'),
      default='vllm',
      help='With --use_dynamo: "vllm" (GPU) or "mocker", Dynamo\'s CPU '
      'stand-in that needs no GPU and generates empty text.')
  parser.add_argument(
      '--max_tokens',
      type=int,
      default=16,
      help='Maximum number of tokens to generate for each input.')
  parser.add_argument(
      '--temperature',
      type=float,
      default=None,
      help="Sampling temperature (the server's default if unset).")
  parser.add_argument(
      '--vllm_max_num_seqs',
      type=int,
      default=None,
      help='vLLM --max-num-seqs. Default: 32 on GPUs under 20 GiB (T4), '
      "else vLLM's default.")
  parser.add_argument(
      '--vllm_gpu_memory_utilization',
      type=float,
      default=None,
      help='vLLM --gpu-memory-utilization. Default: 0.72 on GPUs under 20 '
      "GiB (T4), else vLLM's default.")
  parser.add_argument(
      '--tensor_parallel_size',
      type=int,
      default=1,
      help='GPUs per engine. Default 1: one engine per GPU of the worker.')
  parser.add_argument(
      '--router_mode',
      choices=('round-robin', 'random', 'kv'),
      default='round-robin',
      help='How the Dynamo frontend spreads requests over engines.')
  parser.add_argument(
      '--log_level',
      choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'),
      default='WARNING',
      help='Log level. Default WARNING: warnings and errors (the stack\'s '
      'with the component\'s name), plus a progress line every 15 s on long '
      "runs. INFO adds Beam's; DEBUG adds every line etcd, the frontend and "
      'the engines print.')
  parser.add_argument(
      '--engine_arg',
      action='append',
      default=[],
      metavar='FLAG[=VALUE]',
      help='Extra engine flag, repeatable: --engine_arg max-model-len=2048 '
      '--engine_arg enforce-eager.')
  return parser.parse_known_args(argv)


def engine_kwargs(known_args) -> dict[str, Optional[str]]:
  """vllm_server_kwargs from the flags; T4 defaults apply on the worker."""
  kwargs: dict[str, Optional[str]] = {}
  if known_args.vllm_max_num_seqs is not None:
    kwargs['max-num-seqs'] = str(known_args.vllm_max_num_seqs)
  if known_args.vllm_gpu_memory_utilization is not None:
    kwargs['gpu-memory-utilization'] = str(
        known_args.vllm_gpu_memory_utilization)
  for item in known_args.engine_arg:
    flag, has_value, value = item.partition('=')
    kwargs[flag.lstrip('-')] = value if has_value else None
  return kwargs


def build_handler(known_args):
  model = known_args.model or (
      TINY_MODEL_DIR if known_args.engine == 'mocker' else 'facebook/opt-125m')
  common = dict(
      vllm_server_kwargs=engine_kwargs(known_args),
      use_dynamo=known_args.use_dynamo,
      engine=known_args.engine,
      tensor_parallel_size=known_args.tensor_parallel_size,
      router_mode=known_args.router_mode)
  if known_args.chat:
    return VLLMChatModelHandler(
        model, chat_template_path=known_args.chat_template, **common)
  return VLLMCompletionsModelHandler(model, **common)


def parse_input(line: str, chat: bool) -> Any:
  """One input line to an element: a prompt (str), a conversation
  (messages), or, for a JSON record, the record itself: its "prompt" or
  "messages" and any request parameters it carries (they override the
  flags for that record; the handler checks them, and a bad one sends the
  record to the dead letters)."""
  stripped = line.strip()
  if not stripped.startswith('{'):
    return [OpenAIChatMessage('user', stripped)] if chat else stripped
  record = json.loads(stripped)
  if not isinstance(record, dict):
    raise ValueError('a JSON input line must be an object')
  if 'messages' in record:
    if not chat:
      raise ValueError('a "messages" record needs --chat')
    return record
  if 'prompt' in record:
    if not chat:
      return record
    fields = {k: v for k, v in record.items() if k != 'prompt'}
    return {'messages': [{'role': 'user', 'content': record['prompt']}],
            **fields}
  raise ValueError('a JSON record needs a "prompt" or a "messages" field')


def describe_input(example: Any) -> Any:
  """The prompt (str) or the messages (list of dicts) of an element."""
  if isinstance(example, dict):
    example = example.get('messages', example.get('prompt'))
  if isinstance(example, str) or not isinstance(example, list):
    return example
  return [
      m if isinstance(m, dict) else {'role': m.role, 'content': m.content}
      for m in example
  ]


def describe_parameters(example: Any) -> dict:
  """The request parameters a record carried, if any."""
  if not isinstance(example, dict):
    return {}
  return {k: v for k, v in example.items() if k not in ('prompt', 'messages')}


class FormatResult(beam.DoFn):
  """A PredictionResult as one JSONL record."""
  def __init__(self):
    self.written = Metrics.counter(NAMESPACE, 'results')

  def process(self, result: PredictionResult) -> Iterable[str]:
    choice = result.inference.choices[0]
    text = choice.text if hasattr(choice, 'text') else choice.message.content
    usage = result.inference.usage
    self.written.inc()
    record = {
        'input': describe_input(result.example),
        'text': text or '',
        'finish_reason': choice.finish_reason,
        'prompt_tokens': usage.prompt_tokens if usage else None,
        'completion_tokens': usage.completion_tokens if usage else None,
        'model': result.model_id,
    }
    parameters = describe_parameters(result.example)
    if parameters:
      record['parameters'] = parameters
    yield json.dumps(record, default=str)


class FormatFailure(beam.DoFn):
  """A dead-letter pair (input, error) as one JSONL record."""
  def __init__(self, stage: str):
    self.stage = stage
    self.failed = Metrics.counter(NAMESPACE, 'dead_letters')

  def process(self, pair) -> Iterable[str]:
    element, error = pair
    if isinstance(element, PredictionResult):
      element = element.example
    if isinstance(error, tuple):  # Beam's (type, repr, traceback)
      error = error[1]
    self.failed.inc()
    inputs = element if isinstance(element, list) and self.stage == (
        'inference') else [element]
    for item in inputs:
      record = {
          'input': describe_input(item),
          'stage': self.stage,
          'error': str(error),
      }
      parameters = describe_parameters(item)
      if parameters:
        record['parameters'] = parameters
      yield json.dumps(record, default=str)


def build_pipeline(pipeline, known_args, handler):
  """Read, infer, write results and dead letters."""
  if known_args.input:
    lines = pipeline | 'Read' >> beam.io.ReadFromText(known_args.input)
    parsed, bad_lines = (
        lines
        | 'SkipBlank' >> beam.Filter(lambda line: line.strip())
        | 'Parse' >> beam.Map(parse_input, known_args.chat)
        .with_exception_handling())
  else:
    examples = CHAT_EXAMPLES if known_args.chat else COMPLETION_EXAMPLES
    parsed = pipeline | 'Examples' >> beam.Create(examples)
    bad_lines = None

  inference_args = {'max_tokens': known_args.max_tokens}
  if known_args.temperature is not None:
    inference_args['temperature'] = known_args.temperature
  results, dead = (
      parsed
      | 'RunInference' >> RunInference(
          handler, inference_args=inference_args).with_exception_handling())

  _ = (
      results
      | 'FormatResults' >> beam.ParDo(FormatResult())
      | 'WriteResults' >> beam.io.WriteToText(
          known_args.output, shard_name_template=''))
  failures = [
      dead.failed_inferences | 'FailedBatches' >> beam.ParDo(
          FormatFailure('inference')),
      dead.failed_postprocessing[0] | 'FailedElements' >> beam.ParDo(
          FormatFailure('request')),
  ]
  if bad_lines is not None:
    failures.append(bad_lines | 'BadLines' >> beam.ParDo(FormatFailure('input')))
  _ = (
      failures
      | 'AllFailures' >> beam.Flatten()
      | 'WriteDeadLetters' >> beam.io.WriteToText(
          known_args.output + '.dead_letter', shard_name_template=''))


def _counter(result, namespace: str, name: str) -> int:
  query = result.metrics().query(
      MetricsFilter().with_namespace(namespace).with_name(name))
  return sum(c.committed or 0 for c in query['counters'])


def configure_logging(level: str) -> None:
  """Warnings, errors and the progress line by default; more on request."""
  logging.basicConfig(
      level=level, format='%(levelname)s %(name)s: %(message)s', force=True)
  logging.getLogger('apache_beam_dynamo.progress').setLevel(
      min(logging.INFO, logging.getLevelName(level)))


def run(argv=None, save_main_session=True):
  known_args, pipeline_args = parse_known_args(argv)
  configure_logging(known_args.log_level)
  options = PipelineOptions(pipeline_args)
  options.view_as(SetupOptions).save_main_session = save_main_session
  handler = build_handler(known_args)

  started = time.monotonic()
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, known_args, handler)
  result = pipeline.run()
  result.wait_until_finish()
  elapsed = time.monotonic() - started

  results = _counter(result, NAMESPACE, 'results')
  dead = _counter(result, NAMESPACE, 'dead_letters')
  completion = _counter(result, 'BeamML_Dynamo', 'completion_tokens')
  prompt = _counter(result, 'BeamML_Dynamo', 'prompt_tokens')
  print(f'Results: {known_args.output}')
  print(f'Dead letters: {known_args.output}.dead_letter')
  print(f'{results} results, {dead} failed, {prompt} prompt tokens, '
        f'{completion} completion tokens in {elapsed:.1f} s')
  return result


if __name__ == '__main__':
  run(sys.argv[1:])
