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
``--variant NAME=FLAG:VALUE,...``. Each step runs in a child whose output lines (vLLM's and, for ours,
the stack's children forwarded through logging) are stamped here on
arrival, in seconds since the child was spawned; the child adds ``MARK``
lines (its own milestones, and for ours a poller that watches etcd, the
frontend and the model list). ``phases()`` turns the stamped lines into a
timeline. Writes ``DIR/<step>.log`` (stamped lines) and
``DIR/startup.json`` after every step; ``--after_ours_warm CMD`` runs a
command (e.g. bench/http_clients.py) against the still running stack at
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

HERE = os.path.dirname(os.path.abspath(__file__))
# (phase milestone, regex on a stamped line); the first match counts.
MILESTONES = [
    ('imports done', r'^MARK imports_done'),
    ('load_model called', r'^MARK load_model_called'),
    ('start cache restored', r'Start cache .*: restored'),
    ('etcd up', r'^MARK etcd_up'),
    ('frontend up', r'^MARK frontend_live'),
    ('engine process seen', r'^MARK engine_seen'),
    ('dynamo.vllm first log line', r'apache_beam_dynamo\.engine'),
    ('model resolved', r'Resolved architecture'),
    ('engine config built', r'Initializing a V1 LLM engine'),
    ('weights: start', r'Starting to load model|Loading model from scratch'),
    ('weights: loaded', r'Model loading took'),
    ('compile: cache dir', r"Using cache directory: .* for vLLM's torch.compile"),
    ('compile: dynamo bytecode', r'Dynamo bytecode transform time'),
    ('compile: AOT loaded', r'Directly load AOT compilation'),
    ('compile: graph loaded from cache', r'Directly load the compiled graph'),
    ('compile: graph compiled', r'Compiling a graph for compile range'),
    ('compile: done', r'torch\.compile (took|takes) '),
    ('profiling/warm-up run', r'Initial profiling/warmup run took'),
    ('KV cache: memory known', r'Available KV cache memory'),
    ('KV cache: allocated', r'GPU KV cache size'),
    ('CUDA graphs captured', r'Graph capturing finished'),
    ('kernel warm-up done', r'Kernel JIT monitor activated'),
    ('engine core ready', r'init engine \(profile, create kv cache, warmup model\) took'),
    ('engine client ready', r'VllmWorker for .* has been initialized|^MARK llm_loaded'),
    ('registration', r'Registering model with endpoint types'),
    ('model listed', r'^MARK model_listed'),
    ('ready (warm-up done)', r'^MARK load_model_returned'),
    ('first result', r'^MARK first_result'),
    ('generate returned', r'^MARK generate_done'),
    ('last result', r'^MARK last_result'),
]
# Durations vLLM reports itself (seconds).
REPORTED = [
    ('weights_s', r'Model loading took .* and ([\d.]+) seconds'),
    ('weights_file_s', r'Loading weights took ([\d.]+) seconds'),
    ('dynamo_bytecode_s', r'Dynamo bytecode transform time: ([\d.]+) s'),
    ('graph_from_cache_s', r'Directly load the compiled graph.*took ([\d.]+) s'),
    ('graph_compile_s', r'Compiling a graph for compile range .* takes ([\d.]+) s'),
    ('torch_compile_total_s', r'torch\.compile (?:took|takes) ([\d.]+) s'),
    ('profile_warmup_s', r'Initial profiling/warmup run took ([\d.]+) s'),
    ('graph_capture_s', r'Graph capturing finished in ([\d.]+) secs'),
    ('init_engine_s', r'init engine \(profile, create kv cache, warmup model\) took ([\d.]+)'),
    ('kv_cache_gib', r'Available KV cache memory: ([\d.]+) GiB'),
    ('kv_cache_tokens', r'GPU KV cache size: ([\d,]+) tokens'),
]
CACHE_DIR_RE = re.compile(r"Using cache directory: (\S+) for vLLM's torch.compile")


def make_prompts(model: str, count: int, tokens: int) -> list[str]:
  """The same prompts bench/gpu_compare.py makes."""
  sys.path.insert(0, HERE)
  from gpu_compare import make_prompts as gpu_compare_prompts  # pylint: disable=import-outside-toplevel
  return gpu_compare_prompts(model, count, tokens)


def mark(name: str, t: float = None, **fields) -> None:
  """A milestone line, with this machine's monotonic clock (now, or ``t``)."""
  fields['t'] = time.monotonic() if t is None else t
  sys.stderr.write(f'MARK {name} {json.dumps(fields)}\n')
  sys.stderr.flush()


# -- children ------------------------------------------------------------------


def child_vllm(args, prompts) -> dict:
  mark('child_started')
  from vllm import LLM, SamplingParams
  from tqdm import tqdm
  mark('imports_done')
  finished: list[tuple[float, int]] = []

  class Recorder(tqdm):
    def __init__(self, *a, **k):
      k['file'] = open(os.devnull, 'w')
      super().__init__(*a, **k)

    def update(self, n=1):
      # generate() also shows a bar while it adds the requests: skip it
      if str(self.desc).startswith('Processed'):
        finished.append((time.monotonic(), n))
      return super().update(n)

  began = time.monotonic()
  llm = LLM(model=args.model, max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization)
  loaded = time.monotonic()
  mark('llm_loaded', load_s=loaded - began)
  params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0,
                          ignore_eos=True)
  outputs = llm.generate(prompts, params, use_tqdm=Recorder)
  done = time.monotonic()
  mark('generate_done')
  tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
  if finished:  # the first request done inside generate (not returned yet)
    mark('first_result', t=finished[0][0])
    mark('last_result', t=finished[-1][0])
  try:  # don't leave the EngineCore process holding the GPU
    llm.llm_engine.engine_core.shutdown()
  except Exception as e:  # pylint: disable=broad-except
    mark('shutdown_failed', error=repr(e))
  del llm
  return {
      'load_s': loaded - began,
      'generate_s': done - loaded,
      'tokens': tokens,
      'results': len(outputs),
      'tokens_per_s': tokens / (done - loaded),
      'first_request_done_after_generate_s': finished[0][0] - loaded,
      # (monotonic time, requests finished then); each has max_tokens tokens
      'finished': [(t, n) for t, n in finished],
  }


def _poll_stack(model_name: str, stop: threading.Event) -> None:
  """MARKs when etcd, the frontend and the engine come up, from outside:
  finds their ports in the command lines of this machine's processes."""
  import urllib.request
  import psutil
  seen: set[str] = set()
  etcd_url = frontend_url = None

  def ok(url: str) -> bool:
    try:
      with urllib.request.urlopen(url, timeout=0.5) as reply:
        return reply.status == 200
    except Exception:  # pylint: disable=broad-except
      return False

  def once(name, **fields):
    if name not in seen:
      seen.add(name)
      mark(name, **fields)

  while not stop.is_set() and 'model_listed' not in seen:
    if etcd_url is None or frontend_url is None or 'engine_seen' not in seen:
      for proc in psutil.Process().children(recursive=True):  # ours only
        try:
          info = {'cmdline': proc.cmdline(), 'create_time': proc.create_time()}
        except psutil.Error:
          continue
        cmd = info['cmdline'] or []
        if etcd_url is None and cmd and os.path.basename(cmd[0]) == 'etcd' and (
            '--listen-client-urls' in cmd):
          etcd_url = cmd[cmd.index('--listen-client-urls') + 1]
          once('etcd_seen', create_time=info['create_time'])
        if frontend_url is None and 'dynamo.frontend' in cmd and (
            '--http-port' in cmd):
          frontend_url = 'http://127.0.0.1:' + cmd[cmd.index('--http-port') + 1]
          once('frontend_seen', create_time=info['create_time'])
        if 'dynamo.vllm' in cmd or 'dynamo.mocker' in cmd:
          once('engine_seen', create_time=info['create_time'])
    if etcd_url and 'etcd_up' not in seen and ok(etcd_url + '/health'):
      once('etcd_up')
    if frontend_url and 'frontend_live' not in seen and ok(frontend_url + '/live'):
      once('frontend_live')
    if frontend_url and 'frontend_live' in seen and ok(
        f'{frontend_url}/v1/models/{model_name}/ready'):
      once('model_listed')
    time.sleep(0.05)


def beam277_handler(args):
  """apache-beam 2.77's own handler, default settings (on the CPU mocker
  through bench/beam277.py, which needs DYN_SYSTEM_PORT for an offline
  model)."""
  if args.mocker:
    sys.path.insert(0, HERE)
    os.environ.setdefault('DYN_SYSTEM_PORT', '29123')
    import beam277  # noqa: F401  (swaps dynamo.vllm for the mocker)
    flags = {'speedup-ratio': '0'}
  else:
    flags = {'gpu-memory-utilization': str(args.gpu_memory_utilization)}
  from apache_beam.ml.inference.vllm_inference import (
      VLLMCompletionsModelHandler as Beam277)
  return Beam277(args.model, flags, use_dynamo=True)


def child_pipeline(args, prompts) -> dict:
  """ours (this package) or beam (apache-beam 2.77) in a DirectRunner
  pipeline."""
  import logging
  logging.basicConfig(
      level=logging.INFO, stream=sys.stderr,
      format='%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s',
      datefmt='%H:%M:%S')
  logging.getLogger('apache_beam_dynamo').setLevel(logging.DEBUG)
  mark('child_started')
  import apache_beam as beam
  from apache_beam.ml.inference.base import RunInference
  from apache_beam_dynamo import VLLMCompletionsModelHandler
  mark('imports_done')
  sys.path.insert(0, HERE)
  import startup_marks  # a module of its own: Beam pickles its functions by reference

  served = os.path.basename(os.path.normpath(args.model))
  stop = threading.Event()
  threading.Thread(target=_poll_stack, args=(served, stop), daemon=True).start()

  inference_args = {'max_tokens': args.max_tokens, 'temperature': 0.0,
                    'ignore_eos': True}
  options = {}
  if args.child == 'beam':
    handler = beam277_handler(args)
    # 2.77 hands the arguments to the openai SDK as they are
    inference_args['extra_body'] = {'ignore_eos': inference_args.pop('ignore_eos')}
    # one id, or 2.77 starts a server per pipeline
    options['model_identifier'] = 'startup-compare-beam'
  else:
    flags = json.loads(args.engine_flags)
    # the handler's own options, not engine flags
    handler_options = {name: int(flags.pop(key)) for key, name in (
        ('inflight', 'max_concurrent_requests'), ('min_batch', 'min_batch_size'),
        ('max_batch', 'max_batch_size')) if key in flags}
    if args.mocker:  # a CPU dry run of this script
      flags = {'speedup-ratio': '0'}
      handler_options['engine'] = 'mocker'
    else:
      flags = {'gpu-memory-utilization': str(args.gpu_memory_utilization),
               **flags}
    handler = VLLMCompletionsModelHandler(
        args.model, flags, use_dynamo=True, keep_alive_s=600,
        startup_timeout_s=900, compile_cache=args.compile_cache,
        **handler_options)
  handler_class = type(handler)
  original = handler_class.load_model

  def load_model(self):
    mark('load_model_called')
    try:
      return original(self)
    finally:
      mark('load_model_returned')

  handler_class.load_model = load_model
  prompts_jsonl = f'{args.prompts_file}.{len(prompts)}.jsonl'
  with open(prompts_jsonl, 'w') as f:
    f.writelines(json.dumps(prompt) + '\n' for prompt in prompts)
  pipeline = beam.Pipeline()
  _ = (pipeline | beam.io.ReadFromText(prompts_jsonl) | beam.Map(json.loads)
       | beam.Map(startup_marks.mark_start)
       | RunInference(handler, inference_args=inference_args, **options)
       | beam.Map(startup_marks.record))
  began = time.monotonic()
  mark('pipeline_run')
  pipeline.run().wait_until_finish()
  ended = time.monotonic()
  stop.set()
  results = startup_marks.RESULTS
  times = [t for t, _ in results]
  mark('first_result', t=min(times))
  mark('last_result', t=max(times))
  tokens = sum(n for _, n in results)
  # steady: from the first result to the last (the first batch's time is
  # start-up); overall: from the first prompt reaching RunInference.
  report = {
      'pipeline_wall_s': ended - began,
      'first_result_after_pipeline_run_s': min(times) - began,
      'tokens': tokens,
      'results': len(results),
      'tokens_per_s_from_first_input': tokens / (max(times) - startup_marks.MARKS['start']),
      'tokens_per_s_after_first_result': (
          (tokens - sum(n for t, n in results if t == min(times))) /
          max(max(times) - min(times), 1e-9)),
      'results_t': sorted(results),
  }
  if args.child == 'beam':  # 2.77 leaves its server running
    sys.path.insert(0, HERE)
    import timing  # pylint: disable=import-outside-toplevel
    report['processes_left_behind'] = timing.reap_children()
  if args.after:
    stack = handler.load_model()  # a lease on the same, still running stack
    state = stack.wait_ready()
    command = args.after.format(url=state.base_url, model=state.model)
    mark('after_command', command=command)
    done = subprocess.run(command, shell=True, check=False)
    report['after_rc'] = done.returncode
  return report


# -- the parent ----------------------------------------------------------------


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


def log_name(step: str) -> str:
  """The step's log file: no '+' (the device tool does not bring such names
  back)."""
  return step.replace('+', '_') + '.log'


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
  if step_mode(step) in ('cold', 'restore'):
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


def phases(lines: list[tuple[float, str]]) -> dict:
  """Seconds since spawn of each milestone's first line."""
  found = {}
  for name, pattern in MILESTONES:
    regex = re.compile(pattern)
    for t, line in lines:
      if regex.search(line):
        found[name] = round(t, 3)
        break
  return found


def reported(lines: list[tuple[float, str]]) -> dict:
  found: dict = {}
  for name, pattern in REPORTED:
    regex = re.compile(pattern)
    values = [m.group(1) for _, l in lines if (m := regex.search(l))]
    if values:
      found[name] = [float(v.replace(',', '')) for v in values]
  return found


def gpu_in_use() -> str:
  sys.path.insert(0, HERE)
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
      'min_batch_size and max_batch_size')
  parser.add_argument('--engine_flags', default='{}', help=argparse.SUPPRESS)
  parser.add_argument('--mocker', action='store_true',
                      help='ours on the CPU mocker (a dry run of this script)')
  args = parser.parse_args(argv)
  args.variants = {name: flags.split(',') for name, _, flags in (
      v.partition('=') for v in args.variant)}

  if args.child:
    with open(args.prompts_file) as f:
      prompts = json.load(f)
    if args.prompts_limit:
      prompts = prompts[:args.prompts_limit]
    run = child_vllm if args.child == 'vllm' else child_pipeline
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
    # the GPU must be free of the last step's engine
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
