#!/usr/bin/env python3
"""Throughput and startup of the handlers on the CPU lane, in one run.

    .venv/bin/python bench/bench.py            # everything (~40 min)
    .venv/bin/python bench/bench.py --quick    # 1 repeat of 2,000 prompts

For each profile (mocker --speedup-ratio 0: pure overhead, 16 tokens out;
--speedup-ratio 1: simulated engine time, 16 and 128 tokens out) and each
configuration, on the same prompts:

  ceiling     the frontend of a stack blasted directly by one asyncio
              client (the handlers' transport: one connection pool, 512
              requests in flight), no Beam
  beam-2.77   apache-beam 2.77's VLLMCompletionsModelHandler(use_dynamo=True)
              with the mocker swapped in for dynamo.vllm (bench/beam277.py)
  ours        VLLMCompletionsModelHandler(use_dynamo=True, engine="mocker"),
              default settings
  ours-tuned  the same with min_batch_size=1024 (a bigger first batch)

Each run is a fresh process (so startup and peak RSS are its own) on an
otherwise idle machine. Steady-state throughput excludes startup: output
over the time from the first prompt reaching RunInference (the stack is
ready by then: the handler loads it at setup) to the last result; for the
ceiling, over the time all requests took. "ready" is launch to first
result. Then a soak run of 50,000 requests samples the pipeline process's
RSS, threads and file descriptors. Prints tables and writes JSON.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import timing  # pylint: disable=wrong-import-position

CONFIGS = ('ceiling', 'beam-2.77', 'ours', 'ours-tuned')
# A bigger first batch than the defaults' (512, doubling to 4,096): fewer
# drain-and-refill gaps, for a later first result.
TUNED = dict(min_batch_size=1024, max_batch_size=4096)
# (mocker speedup ratio, prompts, max_tokens) of each profile.
PROFILES = ((0, 5000, 16), (1, 5000, 16), (1, 2000, 128))


def prompts(count: int) -> list[str]:
  return [f'Benchmark prompt number {i}: say something.' for i in range(count)]


# -- one run (in its own process) ----------------------------------------------


def run_ceiling(args) -> dict:
  """All prompts at once through one client (the handlers' own transport,
  one connection pool, ``--concurrency`` in flight); no Beam."""
  from apache_beam_dynamo import TINY_MODEL_DIR
  from apache_beam_dynamo.client.shared import shared_client
  from apache_beam_dynamo.config.stack import StackConfig
  from apache_beam_dynamo.runtime.registry import registry

  class Holder:
    pass

  holder = Holder()
  started = time.monotonic()
  config = StackConfig(
      TINY_MODEL_DIR, use_dynamo=True, engine='mocker',
      engine_args=(('speedup-ratio', str(args.speedup)), ), keep_alive_s=0)
  state = registry.acquire(config, holder).wait_ready()
  ready_s = time.monotonic() - started
  bodies = [
      json.dumps({'model': state.model, 'prompt': p,
                  'max_tokens': args.max_tokens}).encode()
      for p in prompts(args.prompts)
  ]
  timing.mark_start(None)
  replies = shared_client().post_all(
      'bench', state.base_url + '/v1/completions', bodies,
      concurrency=args.concurrency, timeout_s=600)
  timing.RESULT_TIMES.extend([time.monotonic()] * len(replies))
  tokens = sum(json.loads(r.body)['usage']['completion_tokens'] for r in replies)
  del holder
  return {'ready_s': ready_s, 'tokens': tokens}


def run_pipeline(args) -> dict:
  import apache_beam as beam
  from apache_beam.ml.inference.base import RunInference
  from apache_beam_dynamo import TINY_MODEL_DIR

  if args.config == 'beam-2.77':
    # 2.77 needs etcd on PATH and DYN_SYSTEM_PORT for an offline local model.
    os.environ['PATH'] = os.path.dirname(sys.executable) + ':' + os.environ['PATH']
    os.environ['DYN_SYSTEM_PORT'] = '29123'
    import beam277
    base = beam277.VLLMCompletionsModelHandler
    kwargs = dict(vllm_server_kwargs={'speedup-ratio': str(args.speedup)},
                  use_dynamo=True)
  else:
    from apache_beam_dynamo import VLLMCompletionsModelHandler as base
    kwargs = dict(vllm_server_kwargs={'speedup-ratio': str(args.speedup)},
                  use_dynamo=True, engine='mocker', keep_alive_s=0)
    if args.config == 'ours-tuned':
      kwargs.update(TUNED)

  timing.mark_load_model(base)
  handler = base(TINY_MODEL_DIR, **kwargs)
  pipeline = beam.Pipeline()
  _ = (pipeline | beam.Create(prompts(args.prompts))
       | beam.Map(timing.mark_start)
       | RunInference(handler, inference_args={'max_tokens': args.max_tokens})
       | beam.Map(timing.record)
       | beam.CombineGlobally(sum)
       | beam.Map(timing.record_total))
  started = time.monotonic()
  pipeline.run().wait_until_finish()
  left_behind = timing.reap_children() if args.config == 'beam-2.77' else 0
  return {
      'processes_left_behind': left_behind,
      'ready_s': timing.RESULT_TIMES[0] - started,
      'load_model_to_first_s': timing.RESULT_TIMES[0] - timing.MARKS['load_model'],
      'tokens': timing.MARKS['tokens'],
  }


def run_one(args) -> None:
  """Runs one configuration in this process; prints its numbers as JSON."""
  samples = []
  stop = threading.Event()
  if args.sample:
    import psutil
    me = psutil.Process()

    def sample():
      while not stop.wait(1.0):
        samples.append((len(timing.RESULT_TIMES), me.memory_info().rss // 2**20,
                        me.num_threads(), me.num_fds()))

    threading.Thread(target=sample, daemon=True).start()
  numbers = run_ceiling(args) if args.config == 'ceiling' else run_pipeline(args)
  stop.set()
  times = sorted(timing.RESULT_TIMES)
  span = times[-1] - timing.MARKS['start']
  numbers.update({
      'requests': len(times),
      'requests_per_s': len(times) / span,
      'tokens_per_s': numbers['tokens'] / span,
      'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      # CPU this process (Beam + client, not the stack) took from the
      # machine's cores in the steady state, per 1,000 requests.
      'cpu_s_per_1000': 1000 * (timing.process_cpu_s() -
                                timing.MARKS['cpu_at_start']) / len(times),
      'samples': samples,
  })
  print('RESULT ' + json.dumps(numbers), flush=True)


# -- the whole benchmark -------------------------------------------------------


def measure(config, speedup, prompts_count, max_tokens, args,
            sample=False) -> dict:
  command = [
      sys.executable, __file__, '--run', config, '--speedup', str(speedup),
      '--prompts', str(prompts_count), '--max_tokens', str(max_tokens),
      '--concurrency', str(args.concurrency)
  ] + (['--sample'] if sample else [])
  return timing.run_child(command, config, timeout_s=3600)


def summarize(runs: list[dict], key: str) -> dict:
  values = [run[key] for run in runs if run.get(key) is not None]
  if not values:
    return {}
  return {'median': statistics.median(values), 'min': min(values),
          'max': max(values)}


def soak(args) -> dict:
  """RSS, threads and file descriptors of the pipeline process over a long
  run, sampled every second (after the first 10% as warm-up)."""
  run = measure('ours', 0, args.soak, 4, args, sample=True)
  samples = [s for s in run['samples'] if s[0] >= args.soak // 10]
  first, last = samples[0], samples[-1]
  keys = ('results', 'rss_mib', 'threads', 'fds')
  return {'requests': run['requests'], 'first': dict(zip(keys, first)),
          'last': dict(zip(keys, last)),
          'max': dict(zip(keys, map(max, zip(*samples))))}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--run', choices=CONFIGS, help=argparse.SUPPRESS)
  parser.add_argument('--sample', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--speedup', type=float, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--prompts', type=int, default=None,
                      help='prompts per run (default: each profile\'s)')
  parser.add_argument('--max_tokens', type=int, default=16,
                      help=argparse.SUPPRESS)
  parser.add_argument('--concurrency', type=int, default=512,
                      help='requests in flight for the ceiling client')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--profiles', default='0,1,2',
                      help='which of the profiles to run: 0 = speedup 0, '
                      '16 tokens; 1 = speedup 1, 16 tokens; 2 = speedup 1, '
                      '128 tokens')
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--soak', type=int, default=50000,
                      help='requests for the resource-growth run (0: skip)')
  parser.add_argument('--quick', action='store_true',
                      help='1 repeat of 2,000 prompts, no soak')
  parser.add_argument('--json', default=os.path.join(HERE, 'results', 'cpu.json'))
  args = parser.parse_args(argv)
  if args.run:
    args.config = args.run
    args.prompts = args.prompts or 5000
    run_one(args)
    return
  if args.quick:
    args.repeats, args.prompts, args.soak = 1, 2000, 0

  report = {'machine': f'{platform.node()} {os.cpu_count()} cores',
            'tuned': TUNED, 'ceiling_concurrency': args.concurrency,
            'profiles': {}}
  for index in map(int, args.profiles.split(',')):
    speedup, count, max_tokens = PROFILES[index]
    count = args.prompts or count
    name = f'speedup {speedup}, {count} prompts, max_tokens {max_tokens}'
    results = {}
    for repeat in range(args.repeats):
      for config in args.configs.split(','):  # interleaved: noise hits all
        run = measure(config, speedup, count, max_tokens, args)
        run.pop('samples')
        results.setdefault(config, []).append(run)
        print(f'{name} repeat {repeat + 1}: {config:10s} '
              f'{run["requests_per_s"]:7.1f} req/s {run["tokens_per_s"]:8.0f} '
              f'tok/s ready {run["ready_s"]:.2f} s', flush=True)
    report['profiles'][name] = {
        config: {key: summarize(runs, key) for key in (
            'requests_per_s', 'tokens_per_s', 'ready_s',
            'load_model_to_first_s', 'peak_rss_mib', 'cpu_s_per_1000')}
        | {'runs': runs}
        for config, runs in results.items()
    }
  print_table(report)
  if args.soak:
    report['soak'] = soak(args)
    print(f'\nSoak, {args.soak} requests (ours, speedup 0): after warm-up '
          f'{report["soak"]["first"]}, at the end {report["soak"]["last"]}, '
          f'max {report["soak"]["max"]}')
  os.makedirs(os.path.dirname(args.json), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'JSON: {args.json}')


def print_table(report: dict) -> None:
  def median(numbers, key):
    return numbers.get(key, {}).get('median', float('nan'))

  for profile, configs in report['profiles'].items():
    ceiling = configs.get('ceiling', {}).get('tokens_per_s', {}).get('median')
    baseline = configs.get('beam-2.77', {}).get('tokens_per_s', {}).get('median')
    print(f'\n{profile} (median [min-max] of the repeats)')
    print(f'{"config":11s} {"req/s":>20s} {"out tok/s":>22s} {"x ceiling":>9s} '
          f'{"x 2.77":>7s} {"ready s":>18s} {"load->1st s":>11s} '
          f'{"peak RSS MiB":>12s} {"CPU s/1k req":>12s}')
    for config, numbers in configs.items():
      tps = numbers['tokens_per_s']['median']
      rps = numbers['requests_per_s']
      ready = numbers['ready_s']
      print(f'{config:11s} {rps["median"]:7.1f} [{rps["min"]:5.0f}-{rps["max"]:5.0f}] '
            f'{tps:8.0f} [{numbers["tokens_per_s"]["min"]:5.0f}-'
            f'{numbers["tokens_per_s"]["max"]:5.0f}] '
            f'{tps / ceiling if ceiling else float("nan"):9.2f} '
            f'{tps / baseline if baseline else float("nan"):7.2f} '
            f'{ready["median"]:5.2f} [{ready["min"]:4.2f}-{ready["max"]:4.2f}] '
            f'{median(numbers, "load_model_to_first_s"):11.2f} '
            f'{median(numbers, "peak_rss_mib"):12.0f} '
            f'{median(numbers, "cpu_s_per_1000"):12.2f}')

if __name__ == '__main__':
  main()
