"""The children bench/startup_compare.py runs, one fresh process per step
(``startup_compare.py --child vllm|ours|beam``): vLLM's offline engine, or
a DirectRunner pipeline with this package's handler or apache-beam 2.77's.
Each prints ``MARK`` lines (its milestones, on its monotonic clock) on
stderr; the parent stamps every line it reads. The bench folder is on
sys.path (startup_compare.py puts it there): its modules import as they
are."""

import json
import os
import subprocess
import sys
import threading
import time


def mark(name: str, t: float = None, **fields) -> None:
  """A milestone line, with this machine's monotonic clock (now, or ``t``)."""
  fields['t'] = time.monotonic() if t is None else t
  sys.stderr.write(f'MARK {name} {json.dumps(fields)}\n')
  sys.stderr.flush()


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
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam_dynamo import VLLMCompletionsModelHandler
  mark('imports_done')
  import startup_marks  # a module of its own: Beam pickles its functions by reference

  served = os.path.basename(os.path.normpath(args.model))
  stop = threading.Event()
  threading.Thread(target=_poll_stack, args=(served, stop), daemon=True).start()

  inference_args = {'max_tokens': args.max_tokens, 'temperature': 0.0,
                    'ignore_eos': True}
  options = {}
  flags = json.loads(args.engine_flags)
  # workers:N: the DirectRunner runs N bundles at once (multi_threading),
  # as a Dataflow worker runs several: their batches overlap on one stack
  workers = int(flags.pop('workers', 1))
  if args.child == 'beam':
    handler = beam277_handler(args)
    # 2.77 hands the arguments to the openai SDK as they are
    inference_args['extra_body'] = {'ignore_eos': inference_args.pop('ignore_eos')}
    # one id, or 2.77 starts a server per pipeline
    options['model_identifier'] = 'startup-compare-beam'
  else:
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
    # beam_sizing:1: BatchElements' own timing targets and jitter, as the
    # handler passed them before settings.BATCH_SIZING (with max_batch:2048,
    # the earlier defaults)
    beam_sizing = int(flags.pop('beam_sizing', 0))
    handler = VLLMCompletionsModelHandler(
        args.model, flags, use_dynamo=True, keep_alive_s=600,
        startup_timeout_s=900, compile_cache=args.compile_cache,
        **handler_options)
    if beam_sizing:
      import functools
      from apache_beam_dynamo.beam.settings import BATCH_SIZING
      kwargs = {k: v for k, v in handler.batch_elements_kwargs().items()
                if k not in dict(BATCH_SIZING)}
      handler.batch_elements_kwargs = functools.partial(dict, kwargs)
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
  pipeline = beam.Pipeline(options=PipelineOptions(
      direct_num_workers=workers, direct_running_mode='multi_threading'
      if workers > 1 else 'in_memory'))
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
  # once each: min() inside the generator below was quadratic in the
  # results (1.3 s for 12,288 on the CPU lane, counted in the job wall)
  first, last = min(times), max(times)
  mark('first_result', t=first)
  mark('last_result', t=last)
  tokens = sum(n for _, n in results)
  # steady: from the first result to the last (the first batch's time is
  # start-up); overall: from the first prompt reaching RunInference.
  report = {
      'pipeline_wall_s': ended - began,
      'first_result_after_pipeline_run_s': first - began,
      'tokens': tokens,
      'results': len(results),
      'tokens_per_s_from_first_input': tokens / (last - startup_marks.MARKS['start']),
      'tokens_per_s_after_first_result': (
          (tokens - sum(n for t, n in results if t == first)) /
          max(last - first, 1e-9)),
      'results_t': sorted(results),
  }
  if args.child == 'beam':  # 2.77 leaves its server running
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
