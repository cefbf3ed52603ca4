#!/usr/bin/env python3
"""KV-aware routing against round-robin on prefix-heavy prompts (issue 16).

    .venv/bin/python bench/prefix_bench.py                  # 3 repeats (~15 min)
    .venv/bin/python bench/prefix_bench.py --repeats 1      # a look
    python bench/prefix_bench.py --engine vllm --model DIR ...  # GPUs (docs/gpu.md)

Each run is one Beam pipeline (DirectRunner) in a fresh process, with a
fresh stack (so a cold prefix cache), on the CPU lane: dynamo.mocker at
``--speedup-ratio 1`` (simulated prefill and decode time, prefix caching on,
KV events published). Configurations, interleaved within each repeat so
the machine's noise hits all of them:

  rr          2 mocker engines, router_mode="round-robin" (the default)
  kv          2 mocker engines, router_mode="kv"
  kv-sorted   kv, and the handler sends each batch sorted by prompt (so
              same-prefix requests go out together), results in input order
  rr-1        1 engine (what round-robin and kv both are with one engine)

on two workloads (bench/prefix_workload.py): ``shared`` (32 prefixes of
~1,000 tokens x 100 short questions, shuffled) and ``control`` (the same
sizes, sharing nothing).

Numbers per run: prompts/s and output tokens/s from the first prompt at
RunInference to the last result (startup excluded); time to first token,
the mean over every request, from the frontend's
``dynamo_frontend_time_to_first_token_seconds``; the router's prefix hit
rate, the mean of ``dynamo_component_router_kv_hit_rate`` (the share of a
request's blocks the chosen engine already held, per the KV events the
engines published: only the KV router has it); each engine's request
count; and the handler's Beam metrics (BeamML_Dynamo
``time_to_first_token_micros``, ``prefix_cache_hit_pct``). The bench
process holds a lease on the stack through the pipeline, so the stack's
/metrics can be read after the last result, before the stack stops.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import prefix_workload  # pylint: disable=wrong-import-position
import timing  # pylint: disable=wrong-import-position

CONFIGS = {
    # name: (num_engines, router_mode, sorted batches)
    'rr': (2, 'round-robin', False),
    'kv': (2, 'kv', False),
    'kv-sorted': (2, 'kv', True),
    'rr-1': (1, 'round-robin', False),
}


def sorted_handler(base):
  """``base`` with each batch sent in prompt order (same prefixes
  together); results come back in input order."""
  class Sorted(base):
    def run_inference(self, batch, model, inference_args=None):
      order = sorted(range(len(batch)), key=lambda i: batch[i])
      results = super().run_inference([batch[i] for i in order], model,
                                      inference_args)
      out = [None] * len(batch)
      for position, index in enumerate(order):
        out[index] = results[position]
      return out

  return Sorted


def scrape(url: str) -> dict[str, list[tuple[str, float]]]:
  """Every sample of a Prometheus page: name -> [(labels, value)]."""
  import urllib.request
  text = urllib.request.urlopen(url + '/metrics', timeout=5).read().decode()
  series: dict = {}
  for line in text.splitlines():
    if not line or line.startswith('#'):
      continue
    head, _, value = line.rpartition(' ')
    name, _, labels = head.partition('{')
    try:
      series.setdefault(name, []).append((labels.rstrip('}'), float(value)))
    except ValueError:
      pass
  return series


def total(series, name):
  values = series.get(name)
  return sum(v for _, v in values) if values else None


def stack_numbers(state) -> dict:
  """TTFT, router hit rate, cached tokens and per-engine requests, read
  from the frontend's and the engines' /metrics."""
  import psutil
  frontend = scrape(state.base_url)
  numbers = {}
  count = total(frontend, 'dynamo_frontend_time_to_first_token_seconds_count')
  if count:
    numbers['ttft_ms'] = 1000 * total(
        frontend, 'dynamo_frontend_time_to_first_token_seconds_sum') / count
  count = total(frontend, 'dynamo_component_router_kv_hit_rate_count')
  if count:
    numbers['router_kv_hit_pct'] = 100 * total(
        frontend, 'dynamo_component_router_kv_hit_rate_sum') / count
  numbers['frontend_cached_tokens'] = total(
      frontend, 'dynamo_frontend_cached_tokens_sum')
  numbers['prompt_tokens'] = total(
      frontend, 'dynamo_frontend_input_sequence_tokens_sum')
  engines = []
  for name, pid in sorted(state.pids.items()):
    if not name.startswith('engine'):
      continue
    port = psutil.Process(pid).environ()['DYN_SYSTEM_PORT']
    page = scrape(f'http://127.0.0.1:{port}')
    done = total(page, 'vllm:time_to_first_token_seconds_count') or 0
    engines.append({
        'requests': done,
        'ttft_ms': 1000 * (total(page, 'vllm:time_to_first_token_seconds_sum')
                           or 0) / max(done, 1),
        # vLLM's own prefix-cache counters (dynamo.vllm; not the mocker's)
        'prefix_cache_hits': total(page, 'vllm:prefix_cache_hits_total'),
        'prefix_cache_queries': total(page, 'vllm:prefix_cache_queries_total'),
    })
  hits = [e['prefix_cache_hits'] for e in engines]
  queries = [e['prefix_cache_queries'] for e in engines]
  if None not in hits + queries and sum(queries):
    numbers['engine_prefix_hit_pct'] = 100 * sum(hits) / sum(queries)
  numbers['engines'] = engines
  return numbers


def beam_metrics(result) -> dict:
  from apache_beam.metrics.metric import MetricsFilter
  found = {}
  query = result.metrics().query(MetricsFilter().with_namespace('BeamML_Dynamo'))
  for kind, items in query.items():
    for item in items:
      value = item.committed if item.committed is not None else item.attempted
      name = item.key.metric.name
      if kind == 'distributions':
        found[name] = {'mean': value.mean, 'count': value.count}
      elif kind == 'gauges':
        found[name] = value.value
      else:
        found[name] = value
  return found


def engine_args(args) -> dict:
  """``--engine_arg FLAG=VALUE`` options as vllm_server_kwargs."""
  return dict((a.split('=', 1) + [None])[:2] for a in args.engine_arg or ())


def run_one(args) -> None:
  import apache_beam as beam
  from apache_beam.ml.inference.base import RunInference
  from apache_beam_dynamo import TINY_MODEL_DIR, VLLMCompletionsModelHandler
  from apache_beam_dynamo.runtime.registry import registry

  engines, router, sort = CONFIGS[args.run]
  model = args.model or TINY_MODEL_DIR
  prompts = prefix_workload.WORKLOADS[args.workload](model_dir=model)
  base = sorted_handler(VLLMCompletionsModelHandler) if sort else (
      VLLMCompletionsModelHandler)
  flags = {'speedup-ratio': str(args.speedup)} if args.engine == 'mocker' else {}
  handler = base(
      model, {**flags, **engine_args(args)}, use_dynamo=True,
      engine=args.engine, num_engines=engines, router_mode=router,
      keep_alive_s=0)
  inference_args = {'max_tokens': args.max_tokens}
  if args.ignore_eos:
    inference_args['ignore_eos'] = True

  class Holder:
    pass

  holder = Holder()
  lease = registry.acquire(handler.stack_config, holder)
  lease.wait_ready()
  pipeline = beam.Pipeline()
  _ = (pipeline | beam.Create(prompts)
       | beam.Map(timing.mark_start)
       | RunInference(handler, inference_args=inference_args)
       | beam.Map(timing.record)
       | beam.CombineGlobally(sum)
       | beam.Map(timing.record_total))
  result = pipeline.run()
  result.wait_until_finish()
  times = sorted(timing.RESULT_TIMES)
  span = times[-1] - timing.MARKS['start']
  numbers = {
      'config': args.run, 'workload': args.workload, 'requests': len(times),
      'seconds': span, 'requests_per_s': len(times) / span,
      'tokens_per_s': timing.MARKS['tokens'] / span,
  }
  time.sleep(0.5)  # the last TTFT observations land
  numbers.update(stack_numbers(lease.state))
  numbers['beam'] = beam_metrics(result)
  del holder
  print('RESULT ' + json.dumps(numbers), flush=True)


def measure(config, workload, args) -> dict:
  command = [
      sys.executable, __file__, '--run', config, '--workload', workload,
      '--speedup', str(args.speedup), '--max_tokens', str(args.max_tokens),
      '--engine', args.engine
  ] + (['--model', args.model] if args.model else []) + (
      ['--ignore_eos'] if args.ignore_eos else []) + [f'--engine_arg={a}' for a in args.engine_arg or ()]
  return timing.run_child(command, f'{config} {workload}', timeout_s=1800)


def summary(runs, key):
  values = [r[key] for r in runs if r.get(key) is not None]
  if not values:
    return None
  return {'median': statistics.median(values), 'min': min(values),
          'max': max(values)}


def print_table(report) -> None:
  for workload, configs in report['results'].items():
    base = configs.get('rr', {}).get('tokens_per_s', {}) or {}
    print(f'\n{workload} (median [min-max] of {report["repeats"]} repeats)')
    print(f'{"config":10s} {"prompts/s":>20s} {"out tok/s":>22s} {"x rr":>5s} '
          f'{"TTFT ms":>20s} {"router hit %":>12s} {"per engine":>12s}')
    for config, s in configs.items():
      rps, tps, ttft = s['requests_per_s'], s['tokens_per_s'], s['ttft_ms']
      hit = s.get('router_kv_hit_pct')
      split = '/'.join(str(int(e['requests'])) for e in s['runs'][0]['engines'])
      print(f'{config:10s} {rps["median"]:7.1f} [{rps["min"]:5.1f}-{rps["max"]:5.1f}] '
            f'{tps["median"]:8.0f} [{tps["min"]:5.0f}-{tps["max"]:5.0f}] '
            f'{tps["median"] / base["median"] if base else float("nan"):5.2f} '
            f'{ttft["median"]:7.0f} [{ttft["min"]:4.0f}-{ttft["max"]:4.0f}] '
            f'{hit["median"] if hit else float("nan"):12.1f} {split:>12s}')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--run', choices=CONFIGS, help=argparse.SUPPRESS)
  parser.add_argument('--workload', choices=prefix_workload.WORKLOADS,
                      help=argparse.SUPPRESS)
  parser.add_argument('--speedup', type=float, default=1)
  parser.add_argument('--max_tokens', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--engine', choices=('mocker', 'vllm'), default='mocker',
                      help='vllm: dynamo.vllm on the GPUs (one per engine)')
  parser.add_argument('--model', default=None,
                      help='model directory (default: the tiny model); its '
                      'tokenizer cuts the prefixes to 1,000 tokens')
  parser.add_argument('--ignore_eos', action='store_true',
                      help='every answer max_tokens long (a real model)')
  parser.add_argument('--engine_arg', action='append',
                      help='extra engine flag FLAG=VALUE for every engine, '
                      'e.g. num-gpu-blocks-override=1024 (repeatable)')
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--workloads', default='shared,control')
  parser.add_argument('--json', default=os.path.join(
      HERE, 'results', 'cpu-2026-12-01-prefix', 'prefix.json'))
  args = parser.parse_args(argv)
  if args.run:
    run_one(args)
    return
  report = {'machine': f'{platform.node()} {os.cpu_count()} cores',
            'speedup': args.speedup, 'max_tokens': args.max_tokens,
            'engine_args': engine_args(args),
            'command': ' '.join([os.path.relpath(sys.executable, os.getcwd()),
                                 'bench/prefix_bench.py'] + sys.argv[1:]),
            'repeats': args.repeats, 'runs': []}
  for repeat in range(args.repeats):
    for workload in args.workloads.split(','):
      for config in args.configs.split(','):  # interleaved: noise hits all
        run = measure(config, workload, args)
        run['repeat'] = repeat + 1
        report['runs'].append(run)
        hit = run.get('router_kv_hit_pct')
        print(f'repeat {repeat + 1} {workload:7s} {config:10s} '
              f'{run["requests_per_s"]:6.1f} prompts/s {run["tokens_per_s"]:6.0f} '
              f'tok/s TTFT {run["ttft_ms"]:6.0f} ms router hit '
              f'{hit if hit is not None else float("nan"):5.1f}% engine hit '
              f'{run.get("engine_prefix_hit_pct", float("nan")):5.1f}% engines '
              f'{[int(e["requests"]) for e in run["engines"]]} beam '
              f'{ {k: run["beam"].get(k) for k in ("prefix_cache_hit_pct", "time_to_first_token_micros")} }',
              flush=True)
  report['results'] = {}
  for workload in args.workloads.split(','):
    report['results'][workload] = {}
    for config in args.configs.split(','):
      runs = [r for r in report['runs']
              if r['workload'] == workload and r['config'] == config]
      report['results'][workload][config] = {
          key: summary(runs, key) for key in (
              'requests_per_s', 'tokens_per_s', 'ttft_ms', 'router_kv_hit_pct',
          'engine_prefix_hit_pct')
      } | {'runs': runs}
  print_table(report)
  os.makedirs(os.path.dirname(args.json), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump({k: v for k, v in report.items() if k != 'runs'}, f, indent=1)
  print(f'JSON: {args.json}')


if __name__ == '__main__':
  main()
