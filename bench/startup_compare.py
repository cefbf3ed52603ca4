#!/usr/bin/env python3
"""Start-up timeline and throughput: vLLM's offline engine, ours, apache-beam 2.77.

    python bench/startup_compare.py --model MODEL_DIR --out DIR \
        [--steps vllm-cold,vllm-warm,ours-cold,ours-warm] [--budget_s 560]

Same prompts for every step (``--prompts`` of ~128 tokens, ``max_tokens``
128 with ``ignore_eos``, temperature 0, gpu-memory-utilization 0.5):

  vllm-*   vLLM's offline engine in a fresh process:
           ``LLM(model, max_num_seqs=512, gpu_memory_utilization=0.5)
           .generate(all prompts)``; a progress-bar hook records when each
           request finished (cumulative output tokens over time)
  ours-*   ``VLLMCompletionsModelHandler(model, use_dynamo=True)`` with
           default settings in a DirectRunner pipeline, in a fresh process
           (which starts etcd, dynamo.frontend and dynamo.vllm); the
           pipeline reads the prompts from a JSON-lines file, as
           examples/vllm_text_completion.py does (a ``beam.Create`` of
           12,288 prompts holds back every DoFn's setup, so the engine's
           start, until the DirectRunner has reshuffled them all: ~5 s)
  beam-*   apache-beam 2.77's ``VLLMCompletionsModelHandler(model,
           use_dynamo=True)``, default settings, the same pipeline (the
           server it leaves running is killed after the step)

``*-cold`` first empties vLLM's, Inductor's and Triton's caches (all
pointed under ``--cache_root``); ``*-warm`` reuses what the step before
left. With ``--compile_cache DIR`` ours uses the shared start cache:
``ours-cold`` also empties DIR (a cold worker that publishes the entry),
``ours-restore`` empties only the local caches (a cold worker that
restores it). ``ours-warm+NAME`` runs with the engine flags of
``--variant NAME=FLAG:VALUE,...``; ``ours-prime+NAME`` runs them on
``--cold_prompts`` without emptying a cache (a variant whose flags change
the compile cache's key compiles there, so its warm step is warm). Each step runs in a child whose output
lines (vLLM's and, for ours, the stack's children forwarded through
logging) are stamped here on arrival, in seconds since the child was
spawned; the child adds ``MARK`` lines (its own milestones, and for ours
a poller that watches etcd, the frontend and the model list; the children
are in startup_children.py). ``startup_phases.phases()`` turns the
stamped lines into a timeline. Writes ``DIR/<step>.log`` (stamped lines)
and ``DIR/startup.json`` after every step; ``--after_ours_warm CMD`` runs
a command (e.g. bench/http_clients.py) against the still running stack at
the end of ours-warm, with ``{url}`` and ``{model}`` filled in.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

# this folder's modules (the children, the phases, gpu_compare) import as they are
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import startup_children  # pylint: disable=wrong-import-position
from startup_phases import (  # pylint: disable=wrong-import-position
    CACHE_DIR_RE, log_name, phases, reported)


def make_prompts(model: str, count: int, tokens: int) -> list[str]:
  """The same prompts bench/gpu_compare.py makes."""
  from gpu_compare import make_prompts as gpu_compare_prompts  # pylint: disable=import-outside-toplevel
  return gpu_compare_prompts(model, count, tokens)


def wipe_caches(cache_root: str) -> list[str]:
  wiped = []
  home = os.path.expanduser('~')
  for path in (cache_root, os.path.join(home, '.cache', 'vllm'),
               os.path.join(home, '.triton'),
               f'/tmp/torchinductor_{os.environ.get("USER", "root")}'):
    if os.path.exists(path):
      shutil.rmtree(path, ignore_errors=True)
      wiped.append(path)
  os.makedirs(cache_root, exist_ok=True)
  return wiped


def step_mode(step: str) -> str:
  """'ours-warm+seqs512' -> 'warm'."""
  return step.split('-', 1)[1].partition('+')[0]


def run_child(step: str, args, log_path: str, timeout_s: float) -> dict:
  kind = step.split('-')[0]
  argv = [sys.executable, os.path.abspath(__file__), '--child', kind,
          '--model', args.model, '--prompts_file', args.prompts_file,
          '--max_tokens', str(args.max_tokens),
          '--max_num_seqs', str(args.max_num_seqs),
          '--gpu_memory_utilization', str(args.gpu_memory_utilization)]
  if args.mocker:
    argv.append('--mocker')
  if step == 'ours-warm' and args.after_ours_warm:
    argv += ['--after', args.after_ours_warm]
  if step_mode(step) in ('cold', 'restore', 'prime'):
    argv += ['--prompts_limit', str(args.cold_prompts)]
  if args.compile_cache:
    argv += ['--compile_cache', args.compile_cache]
  variant = step.partition('+')[2]
  argv += ['--engine_flags', json.dumps(
      dict(f.split(':', 1) for f in args.variants[variant]) if variant else {})]
  spawned = time.monotonic()
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors='replace', bufsize=1)
  lines: list[tuple[float, str]] = []
  result = None
  killer = threading.Timer(timeout_s, proc.kill)
  killer.start()
  with open(log_path, 'w') as log:
    for raw in proc.stdout:
      now = time.monotonic() - spawned
      line = raw.rstrip('\n')
      if line.startswith('MARK '):  # its own clock is more exact
        try:
          now = json.loads(line.split(' ', 2)[2])['t'] - spawned
        except (ValueError, IndexError, KeyError):
          pass
      if line.startswith('RESULT '):
        result = json.loads(line[len('RESULT '):])
        log.write(f'{now:9.3f} RESULT (in startup.json)\n')
        continue
      lines.append((now, line))
      log.write(f'{now:9.3f} {line}\n')
      log.flush()
  rc = proc.wait()
  killer.cancel()
  wall = time.monotonic() - spawned
  numbers = result or {}
  # times in the result are monotonic: make them relative to the spawn
  if 'finished' in numbers:
    numbers['finished'] = [(t - spawned, n) for t, n in numbers['finished']]
  if 'results_t' in numbers:
    numbers['results_t'] = [(t - spawned, n) for t, n in numbers['results_t']]
  numbers.update(rc=rc, process_wall_s=wall, phases=phases(lines),
                 reported=reported(lines), cache_dirs=sorted(
                     {m.group(1) for _, l in lines
                      if (m := CACHE_DIR_RE.search(l))}))
  return numbers


def gpu_in_use() -> str:
  from gpu_compare import gpu_memory_in_use  # pylint: disable=import-outside-toplevel
  return gpu_memory_in_use()


def wait_for_supervisors_gone(timeout_s: float = 120) -> None:
  """A step's supervisor outlives it while it stops the stack and finishes
  publishing the start cache: the next step waits for that."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    left = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
      try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
          if b'apache_beam_dynamo.runtime.supervisor' in f.read():
            left.append(pid)
      except OSError:
        pass
    if not left:
      return
    time.sleep(0.5)
  print(f'supervisors still running after {timeout_s:.0f} s', flush=True)


def kill_gpu_holders() -> list[int]:
  """Kills (by pid) what still holds the GPU: an engine a step left behind
  (on the lent machine only this benchmark's processes use the GPU)."""
  import signal
  pids = []
  for row in gpu_in_use().splitlines():
    head = row.split(',')[0].strip()
    if head.isdigit():
      pids.append(int(head))
      try:
        os.kill(int(head), signal.SIGKILL)
      except OSError:
        pass
  if pids:
    print(f'killed GPU holders left behind: {pids}', flush=True)
    time.sleep(2)
  return pids


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--child', choices=('vllm', 'ours', 'beam'))
  parser.add_argument('--model', required=True)
  parser.add_argument('--out', default=os.environ.get('OUT', '/tmp/out'))
  parser.add_argument('--steps', default='vllm-cold,vllm-warm,ours-cold,ours-warm')
  parser.add_argument('--prompts', type=int, default=12288)
  parser.add_argument('--cold_prompts', type=int, default=1024,
                      help='prompts for *-cold steps (they measure start-up)')
  parser.add_argument('--prompt_tokens', type=int, default=128)
  parser.add_argument('--max_tokens', type=int, default=128)
  parser.add_argument('--max_num_seqs', type=int, default=512)
  parser.add_argument('--gpu_memory_utilization', type=float, default=0.5)
  parser.add_argument('--cache_root', default='/tmp/caches')
  parser.add_argument('--budget_s', type=float, default=560)
  parser.add_argument('--min_step_s', default='vllm-cold=150,vllm-warm=100,'
                      'ours-cold=160,ours-warm=150',
                      help='skip a step when less time than this is left')
  parser.add_argument('--after_ours_warm', default='')
  parser.add_argument('--prompts_file')
  parser.add_argument('--prompts_limit', type=int)
  parser.add_argument('--after', default='')
  parser.add_argument(
      '--compile_cache', default=None,
      help="ours: the handler's compile_cache (a local directory here); "
      'ours-cold starts with it empty and publishes, ours-restore empties '
      'only the local caches and restores from it')
  parser.add_argument(
      '--variant', action='append', default=[],
      help='NAME=FLAG:VALUE[,FLAG:VALUE]: engine flags of a step named '
      'ours-MODE+NAME, e.g. seqs512=max-num-seqs:512; inflight:N, min_batch:N and '
      "max_batch:N set the handler's max_concurrent_requests, "
      'min_batch_size and max_batch_size; workers:N runs N bundles at once '
      "(direct_num_workers, multi_threading); beam_sizing:1 BatchElements' "
      'own timing targets and jitter')
  parser.add_argument('--engine_flags', default='{}', help=argparse.SUPPRESS)
  parser.add_argument('--mocker', action='store_true',
                      help='ours on the CPU mocker (a dry run of this script)')
  args = parser.parse_args(argv)
  # a comma starts the next FLAG:VALUE only where one follows, so a value
  # may be JSON: compilation-config:{"cudagraph_capture_sizes":[1,2,4]}
  args.variants = {name: re.split(r',(?=[A-Za-z_][\w-]*:)', flags)
                   for name, _, flags in (v.partition('=') for v in args.variant)}

  if args.child:
    with open(args.prompts_file) as f:
      prompts = json.load(f)
    if args.prompts_limit:
      prompts = prompts[:args.prompts_limit]
    run = (startup_children.child_vllm if args.child == 'vllm'
           else startup_children.child_pipeline)
    numbers = run(args, prompts)
    numbers['prompts'] = len(prompts)
    sys.stdout.flush()
    sys.stderr.flush()
    print('RESULT ' + json.dumps(numbers), flush=True)
    os._exit(0)  # vLLM's atexit hooks can hang; the stack's lease ends here

  started = time.monotonic()
  os.makedirs(args.out, exist_ok=True)
  # Every compile cache under one root, so "cold" empties all of them.
  os.environ.setdefault('VLLM_CACHE_ROOT', os.path.join(args.cache_root, 'vllm'))
  os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR',
                        os.path.join(args.cache_root, 'inductor'))
  os.environ.setdefault('TRITON_CACHE_DIR', os.path.join(args.cache_root, 'triton'))
  # the package's local start cache (compile_cache) lives there too
  os.environ.setdefault('APACHE_BEAM_DYNAMO_CACHE_DIR',
                        os.path.join(args.cache_root, 'abd'))
  os.environ['PYTHONUNBUFFERED'] = '1'
  args.prompts_file = os.path.join(args.cache_root + '-prompts.json')
  with open(args.prompts_file, 'w') as f:
    json.dump(make_prompts(args.model, args.prompts, args.prompt_tokens), f)
  minimum = dict(p.split('=') for p in args.min_step_s.split(','))
  report = {'model': args.model, 'prompts': args.prompts,
            'cold_prompts': args.cold_prompts,
            'prompt_tokens': args.prompt_tokens, 'max_tokens': args.max_tokens,
            'max_num_seqs_offline': args.max_num_seqs,
            'gpu_memory_utilization': args.gpu_memory_utilization,
            'cache_env': {k: os.environ[k] for k in (
                'VLLM_CACHE_ROOT', 'TORCHINDUCTOR_CACHE_DIR', 'TRITON_CACHE_DIR')},
            'steps': {}}
  json_path = os.path.join(args.out, 'startup.json')
  for step in args.steps.split(','):
    left = args.budget_s - (time.monotonic() - started)
    if left < float(minimum.get(step, 60)):
      print(f'{step}: skipped, {left:.0f} s left', flush=True)
      report['steps'][step] = {'skipped': f'{left:.0f} s left'}
      continue
    wait_for_supervisors_gone()
    mode = step_mode(step)
    wiped = wipe_caches(args.cache_root) if mode in ('cold', 'restore') else []
    if mode == 'cold' and args.compile_cache and os.path.isdir(args.compile_cache):
      shutil.rmtree(args.compile_cache)  # a cold worker with no entry yet
      wiped.append(args.compile_cache)
    if not args.mocker:  # the GPU must be free of the last step's engine
      deadline = time.monotonic() + 30
      while gpu_in_use() and time.monotonic() < deadline:
        time.sleep(0.5)
      kill_gpu_holders()
    numbers = run_child(step, args, os.path.join(args.out, log_name(step)),
                        timeout_s=max(left - 5, 30))
    numbers['wiped'] = wiped
    numbers['gpu_after'] = gpu_in_use()
    report['steps'][step] = numbers
    summary = {k: numbers.get(k) for k in (
        'rc', 'load_s', 'generate_s', 'tokens_per_s', 'pipeline_wall_s',
        'first_result_after_pipeline_run_s', 'tokens_per_s_after_first_result',
        'process_wall_s')}
    print(f'{step}: {json.dumps(summary)}', flush=True)
    print(f'{step} phases: {json.dumps(numbers["phases"])}', flush=True)
    print(f'{step} reported: {json.dumps(numbers["reported"])}', flush=True)
    print(f'{step} cache dirs: {numbers["cache_dirs"]}', flush=True)
    with open(json_path, 'w') as f:
      json.dump(report, f, indent=1)
  for root, dirs, _ in os.walk(args.cache_root):
    if os.path.basename(root) == 'torch_compile_cache':
      report['compile_cache_entries'] = sorted(dirs)
  with open(json_path, 'w') as f:
    json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()
