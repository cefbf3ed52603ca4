#!/usr/bin/env python3
"""The handlers on a real GPU (dynamo.vllm), side by side with the alternatives.

    python bench/gpu_compare.py --model MODEL_DIR [--configs ...] [--json OUT]

Same model, prompts (~128 tokens in) and settings (``max_tokens`` 128 with
``ignore_eos``) for each configuration, each in a fresh process:

  ceiling      the stack's frontend blasted directly: all prompts at once
               through one client (256 in flight), no Beam
  ours         VLLMCompletionsModelHandler(use_dynamo=True)
  ours-native  VLLMCompletionsModelHandler(use_dynamo=False): vLLM's server
  beam-2.77    apache-beam 2.77's VLLMCompletionsModelHandler(use_dynamo=True)

Pipelines run once per batch size (Beam's min = max batch size). "ready" is
launch to the first result of a first, small pipeline; throughput is output
tokens over the time from the first prompt reaching RunInference to the
last result. ``--engines N``
runs N engines for ceiling and ours (two-GPU machines). Prints a table
(each figure also as a ratio to the ceiling) and writes JSON.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import timing  # pylint: disable=wrong-import-position

CONFIGS = ('ceiling', 'ours', 'ours-native', 'beam-2.77')
WORDS = ('tensor kernel warp block thread memory cache stream batch token model '
         'pipeline engine worker frontend router window shard bucket queue').split()


def make_prompts(model: str, count: int, tokens: int) -> list[str]:
  """``count`` distinct prompts of about ``tokens`` tokens each."""
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_file(os.path.join(model, 'tokenizer.json'))
  rng = random.Random(1234)
  prompts = []
  for i in range(count):
    text = f'{i}: ' + ' '.join(rng.choice(WORDS) for _ in range(tokens * 2))
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:tokens]
    prompts.append(tokenizer.decode(ids))
  return prompts


def engine_flags(args) -> dict:
  flags = {'gpu-memory-utilization': str(args.gpu_memory_utilization)}
  if args.mocker:
    flags = {'speedup-ratio': '1'}
  return flags


def handler_for(config: str, args, batch: int):
  batching = dict(min_batch_size=batch, max_batch_size=batch)
  if config == 'beam-2.77':
    if args.mocker:
      import beam277  # noqa: F401  (swaps dynamo.vllm for the mocker)
    from apache_beam.ml.inference.vllm_inference import (
        VLLMCompletionsModelHandler as Beam277)
    return Beam277(args.model, engine_flags(args), use_dynamo=True, **batching)
  from apache_beam_dynamo import VLLMCompletionsModelHandler
  options = dict(keep_alive_s=600, startup_timeout_s=900)
  if config == 'ours':
    options.update(use_dynamo=True, num_engines=args.engines,
                   max_concurrent_requests=args.max_concurrent_requests)
  if args.mocker:
    options.update(use_dynamo=True, engine='mocker')
  return VLLMCompletionsModelHandler(
      args.model, engine_flags(args), **batching, **options)


def run_pipeline(config, args, prompts, batch) -> dict:
  import apache_beam as beam
  from apache_beam.ml.inference.base import RunInference

  timing.RESULT_TIMES.clear()
  timing.MARKS.clear()
  inference_args = {'max_tokens': args.max_tokens, 'temperature': 0.0}
  if config == 'beam-2.77':  # it hands args to the openai SDK as they are
    inference_args['extra_body'] = {'ignore_eos': True}
  else:
    inference_args['ignore_eos'] = True
  pipeline = beam.Pipeline()
  _ = (pipeline | beam.Create(prompts)
       | beam.Map(timing.mark_start)
       | RunInference(
           handler_for(config, args, batch),
           inference_args=inference_args,
           # apache-beam 2.77 would start a new server for every pipeline
           # (and leave the last one running); one id makes it reuse one.
           model_identifier=f'gpu-compare-{config}')
       | beam.Map(timing.record)
       | beam.CombineGlobally(sum)
       | beam.Map(timing.record_total))
  started = time.monotonic()
  pipeline.run().wait_until_finish()
  times = sorted(timing.RESULT_TIMES)
  tokens = timing.MARKS['tokens']
  return {
      'batch': batch,
      'first_result_s': times[0] - started,
      'results': len(times),
      'tokens': tokens,
      'tokens_per_s': tokens / (times[-1] - timing.MARKS['start']),
  }


def run_ceiling(args, prompts) -> dict:
  from apache_beam_dynamo.client.shared import shared_client
  from apache_beam_dynamo.config.stack import StackConfig
  from apache_beam_dynamo.runtime.registry import registry

  class Holder:
    pass

  holder = Holder()
  started = time.monotonic()
  config = StackConfig(
      args.model, use_dynamo=True, engine='mocker' if args.mocker else 'vllm',
      engine_args=tuple(engine_flags(args).items()), num_engines=args.engines,
      startup_timeout_s=900)
  state = registry.acquire(config, holder).wait_ready()
  ready_s = time.monotonic() - started
  runs = []
  for _ in range(2):
    bodies = [json.dumps({
        'model': state.model, 'prompt': p, 'max_tokens': args.max_tokens,
        'ignore_eos': True, 'temperature': 0.0
    }).encode() for p in prompts]
    began = time.monotonic()
    replies = shared_client().post_all(
        'bench', state.base_url + '/v1/completions', bodies,
        concurrency=args.concurrency, timeout_s=600)
    span = time.monotonic() - began
    tokens = sum(json.loads(r.body)['usage']['completion_tokens']
                 for r in replies)
    runs.append({'concurrency': args.concurrency, 'tokens': tokens,
                 'tokens_per_s': tokens / span, 'seconds': span})
  del holder
  return {'ready_s': ready_s, 'runs': runs}


def run_one(args) -> None:
  prompts = make_prompts(args.model, args.prompts, args.prompt_tokens)
  if args.config == 'ceiling':
    numbers = run_ceiling(args, prompts)
  else:
    # (apache-beam 2.77 needs etcd on PATH; it serves the model under its
    # path, which Dynamo resolves without a network.)
    warm = run_pipeline(args.config, args, prompts[:16], 16)
    numbers = {
        'ready_s': warm['first_result_s'],
        'runs': [run_pipeline(args.config, args, prompts, b)
                 for b in args.batch_sizes],
    }
  if args.config == 'beam-2.77':
    numbers['processes_left_behind'] = timing.reap_children()
  print('RESULT ' + json.dumps(numbers), flush=True)


def gpu_memory_in_use() -> str:
  try:
    return subprocess.run(
        ['nvidia-smi', '--query-compute-apps=pid,used_memory',
         '--format=csv,noheader'], capture_output=True, text=True,
        timeout=30).stdout.strip()
  except OSError:
    return 'no nvidia-smi'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--run', choices=CONFIGS, help=argparse.SUPPRESS)
  parser.add_argument('--model', required=True)
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--prompts', type=int, default=3072)
  parser.add_argument('--prompt_tokens', type=int, default=128)
  parser.add_argument('--max_tokens', type=int, default=128)
  parser.add_argument('--batch_sizes', default='256,1024,3072')
  parser.add_argument('--concurrency', type=int, default=256)
  parser.add_argument('--engines', type=int, default=None)
  parser.add_argument('--max_concurrent_requests', type=int, default=None,
                      help="ours: requests in flight (default: the handler's)")
  parser.add_argument('--gpu_memory_utilization', type=float, default=0.5)
  parser.add_argument('--mocker', action='store_true',
                      help='dry run on the CPU mocker')
  parser.add_argument('--json', default=os.path.join(
      os.environ.get('OUT', HERE), 'gpu_compare.json'))
  args = parser.parse_args(argv)
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  if args.run:
    args.config = args.run
    run_one(args)
    return

  report = {'model': args.model, 'prompts': args.prompts,
            'prompt_tokens': args.prompt_tokens, 'max_tokens': args.max_tokens,
            'engines': args.engines, 'ceiling_concurrency': args.concurrency,
            'max_concurrent_requests': args.max_concurrent_requests,
            'configs': {}}
  forwarded = [
      '--model', args.model, '--prompts', str(args.prompts),
      '--prompt_tokens', str(args.prompt_tokens),
      '--max_tokens', str(args.max_tokens),
      '--batch_sizes', ','.join(map(str, args.batch_sizes)),
      '--concurrency', str(args.concurrency),
      '--gpu_memory_utilization', str(args.gpu_memory_utilization),
      '--json', args.json,
  ] + (['--engines', str(args.engines)] if args.engines else []) + (
      ['--max_concurrent_requests', str(args.max_concurrent_requests)]
      if args.max_concurrent_requests else []) + (
      ['--mocker'] if args.mocker else [])
  for config in args.configs.split(','):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, '--run', config] + forwarded,
        capture_output=True, text=True, timeout=1800)
    line = next((l for l in done.stdout.splitlines()
                 if l.startswith('RESULT ')), None)
    if done.returncode or line is None:
      print(f'{config} FAILED:\n{done.stderr[-4000:]}', flush=True)
      report['configs'][config] = {'error': done.stderr[-4000:]}
      continue
    numbers = json.loads(line[len('RESULT '):])
    numbers['wall_s'] = time.monotonic() - started
    numbers['gpu_memory_after'] = gpu_memory_in_use()
    report['configs'][config] = numbers
    best = max(r['tokens_per_s'] for r in numbers['runs'])
    print(f'{config}: ready {numbers["ready_s"]:.1f} s, best '
          f'{best:.0f} out tok/s, runs '
          f'{[(r.get("batch") or r.get("concurrency"), round(r["tokens_per_s"])) for r in numbers["runs"]]}'
          f', GPU after: {numbers["gpu_memory_after"] or "free"}', flush=True)
    with open(args.json, 'w') as f:  # after every config: a timeout keeps it
      json.dump(report, f, indent=1)
  print_table(report)


def print_table(report: dict) -> None:
  configs = report['configs']
  ceiling_runs = configs.get('ceiling', {}).get('runs') or [{}]
  ceiling = max(r.get('tokens_per_s', 0) for r in ceiling_runs) or None
  print(f'\n{report["prompts"]} prompts, ~{report["prompt_tokens"]} tokens in, '
        f'{report["max_tokens"]} out (ignore_eos)')
  print(f'{"config":12s} {"batch":>6s} {"out tok/s":>10s} {"x ceiling":>9s} '
        f'{"ready s":>8s}')
  for name, numbers in configs.items():
    for run in numbers.get('runs', []):
      size = run.get('batch') or f'c{run.get("concurrency")}'
      ratio = run['tokens_per_s'] / ceiling if ceiling else float('nan')
      print(f'{name:12s} {size!s:>6s} {run["tokens_per_s"]:10.0f} '
            f'{ratio:9.2f} {numbers["ready_s"]:8.1f}')


if __name__ == '__main__':
  main()
