"""What bench/startup_compare.py reads from a step's stamped log lines:
the milestones of a start-up (the phases docs/gpu.md tables and
bench/plot_gpu.py draws) and the durations vLLM reports itself."""

import re

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


def log_name(step: str) -> str:
  """The step's log file: no '+' (the device tool does not bring such names
  back)."""
  return step.replace('+', '_') + '.log'


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
