"""The one place that builds each child's command line and environment.

Pure: nothing here starts a process, looks at the machine or touches
``os.environ``. Every function takes the parent environment and what the
machine check found (serving/machine.py) as arguments and returns a
:class:`Launch`.

Loopback only: the frontend's HTTP server, the request plane, the worker's
status server and the response streams are pinned to 127.0.0.1 / ``lo``.
Dynamo 1.4's ZMQ event publishers bind ``0.0.0.0`` with no setting to
change it (see README, "Network").
"""

import json
import os
import sys
from typing import Mapping, Optional

from apache_beam_dynamo.config.server_args import SERVED_NAME_FLAGS, ServerArgs

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.processes.launch import Launch
from apache_beam_dynamo.serving.placement import Placement

# Per-request INFO lines cost CPU on the hot path and fill logs; startup,
# warnings and errors stay visible (but not the frontend's warning, at every
# start, that a text-only model can't use multimodal routing, nor the status
# server's line for each liveness probe). A DYN_LOG set by the user wins.
QUIET_DYN_LOG = (
    'info,dynamo_llm::http::service=warn,dynamo_runtime::pipeline::network=warn,'
    'dynamo_runtime::system_status_server=warn,mm_routing=error')

_PLANES: ServerArgs = (
    ('discovery-backend', 'etcd'),
    ('request-plane', 'tcp'),
    ('event-plane', 'zmq'),
)
_NO_KV_EVENTS = '{"enable_kv_cache_events": false}'
# The mocker gets its served name as --model-name; its
# gpu-memory-utilization only declares a share for the GPU ledger
# (serving/ledger.py): the mocker holds no GPU memory.
_NOT_FOR_MOCKER = SERVED_NAME_FLAGS + ('gpu-memory-utilization', )


def _kv_events_config(port: int) -> str:
  """vLLM publishes KV events here (loopback); dynamo.vllm subscribes."""
  return json.dumps({
      'enable_kv_cache_events': True,
      'publisher': 'zmq',
      'endpoint': f'tcp://127.0.0.1:{port}',
  })


def with_defaults(defaults: ServerArgs, user: ServerArgs) -> ServerArgs:
  """The flags a program gets: a user flag replaces the default of that name."""
  user_flags = {flag for flag, _ in user}
  return tuple(p for p in defaults if p[0] not in user_flags) + user


def flags(defaults: ServerArgs, user: ServerArgs) -> list[str]:
  """``--flag value`` pairs of ``with_defaults(defaults, user)``."""
  argv: list[str] = []
  for flag, value in with_defaults(defaults, user):
    argv.append(f'--{flag}')
    if value is not None:
      argv.append(value)
  return argv


def frontend_home(
    parent: Mapping[str, str], placement: Placement) -> dict[str, str]:
  """dynamo.frontend caches model cards in $HOME/.cache/dynamo/mdc (neither
  XDG_CACHE_HOME nor a DYN_ variable moves it): give it a HOME inside the
  stack's private dir, and keep the user's Hugging Face cache where it is."""
  user_cache = parent.get('XDG_CACHE_HOME') or os.path.join(
      parent.get('HOME') or os.path.expanduser('~'), '.cache')
  return {
      'HOME': os.path.join(placement.run_dir, 'frontend-home'),
      'HF_HOME': parent.get('HF_HOME') or os.path.join(user_cache, 'huggingface'),
  }


def _inherited(parent: Mapping[str, str]) -> dict[str, str]:
  """The parent environment minus Dynamo and etcd settings we manage.

  ``DYN_LOG*`` stays (the user's log level); ``ETCD_*`` go because etcd
  reads them as its own flags and the stack sets the one the client needs.
  """
  return {
      key: value
      for key, value in parent.items()
      if not key.startswith('ETCD_') and
      (not key.startswith('DYN_') or key.startswith('DYN_LOG'))
  }


def _dynamo_environment(
    parent: Mapping[str, str], placement: Placement) -> dict[str, str]:
  env = _inherited(parent)
  env.update({
      'ETCD_ENDPOINTS': placement.etcd_endpoints,
      'DYN_NAMESPACE': placement.namespace,
      'DYN_TCP_RPC_HOST': '127.0.0.1',
      'DYN_SYSTEM_HOST': '127.0.0.1',
      'DYN_TCP_RESPONSE_STREAM_HOST': 'lo',
      'DYN_SDK_DISABLE_ANSI_LOGGING': '1',
      'NO_COLOR': '1',
      'PYTHONUNBUFFERED': '1',
  })
  env.setdefault('DYN_LOG', QUIET_DYN_LOG)
  return env


def _gpu_environment(
    parent: Mapping[str, str], config: StackConfig, gpus: tuple[int, ...],
    has_flashinfer: bool) -> dict:
  """Pins the engine to its GPUs (else the worker's, else GPU 0)."""
  visible = ','.join(map(str, gpus)) if gpus else parent.get(
      'CUDA_VISIBLE_DEVICES', '0')
  env = {'CUDA_VISIBLE_DEVICES': visible}
  # vLLM 0.26 probes FlashInfer's sampler at start and dies without it.
  if not has_flashinfer:
    env['VLLM_USE_FLASHINFER_SAMPLER'] = '0'
  env.update(config.engine_env)
  return env


def start_cache_environment(directory: Optional[str]) -> dict[str, str]:
  """vLLM's and Triton's caches in the stack's start cache directory
  (serving/start_cache.py); nothing when there is none."""
  if not directory:
    return {}
  return {
      'VLLM_CACHE_ROOT': os.path.join(directory, 'vllm'),
      'TRITON_CACHE_DIR': os.path.join(directory, 'triton'),
  }


def etcd_launch(
    binary: str, placement: Placement, parent: Mapping[str, str]) -> Launch:
  name = f'abd-{placement.namespace}'
  client = f'http://127.0.0.1:{placement.etcd_client_port}'
  peer = f'http://127.0.0.1:{placement.etcd_peer_port}'
  argv = [
      binary,
      '--name', name,
      '--data-dir', placement.etcd_data_dir,
      '--listen-client-urls', client,
      '--advertise-client-urls', client,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', f'{name}={peer}',
      '--log-level', 'warn',
  ]  # yapf: disable
  env = {k: v for k, v in parent.items() if not k.startswith('ETCD_')}
  return Launch.of('etcd', argv, env)


def frontend_launch(
    config: StackConfig, placement: Placement,
    parent: Mapping[str, str]) -> Launch:
  # KV-aware routing listens to the engines' KV events; other modes don't.
  kv_events = ('router-kv-events' if config.router_mode == 'kv' else
               'no-router-kv-events', None)
  defaults = _PLANES + (('router-mode', config.router_mode), kv_events)
  argv = [
      sys.executable, '-m', 'dynamo.frontend',
      '--http-host', '127.0.0.1',
      '--http-port', str(placement.http_port),
  ] + flags(defaults, config.frontend_args)  # yapf: disable
  env = _dynamo_environment(parent, placement)
  env.update(frontend_home(parent, placement))
  return Launch.of('frontend', argv, env)


def engine_launch(
    config: StackConfig,
    placement: Placement,
    parent: Mapping[str, str],
    index: int = 0,
    gpus: tuple[int, ...] = (),
    gpu_defaults: ServerArgs = (),
    has_flashinfer: bool = False,
    start_cache_dir: Optional[str] = None) -> Launch:
  """Engine ``index``: dynamo.vllm on ``gpus``, or dynamo.mocker on the CPU.

  ``gpu_defaults`` are flags the worker's GPU needs (see gpu.py); the
  user's flags of the same name win. ``start_cache_dir`` holds vLLM's and
  Triton's caches (``engine_env`` still wins).
  """
  env = _dynamo_environment(parent, placement)
  # With a system port the worker serves its own model card, so the frontend
  # never has to resolve the served name through the Hugging Face hub.
  env['DYN_SYSTEM_PORT'] = str(placement.system_ports[index])
  env.update(start_cache_environment(start_cache_dir))
  if config.engine == 'mocker':
    model_dir = (
        placement.mocker_model_dir if config.chat_template else config.model)
    argv = [
        sys.executable, '-m', 'dynamo.mocker',
        '--model-path', model_dir,
        '--model-name', config.served_model_name,
    ] + flags(_PLANES, config.engine_args_without(*_NOT_FOR_MOCKER))  # yapf: disable
    env.update(config.engine_env)
    return Launch.of(
        engine_name(index, len(placement.system_ports)), argv, env)
  # dynamo.vllm through fork_engine: its EngineCore is forked, not spawned
  # (saves a second import of torch and vLLM at every start).
  argv = [
      sys.executable, '-m', 'apache_beam_dynamo.serving.fork_engine',
      'dynamo.vllm', '--model', config.model
  ]
  if config.chat_template:
    argv += ['--custom-jinja-template', placement.chat_template_file]
  kv_events = (
      _kv_events_config(placement.kv_event_ports[index])
      if config.router_mode == 'kv' else _NO_KV_EVENTS)
  defaults = _PLANES + (('kv-events-config', kv_events), ) + gpu_defaults
  if config.tensor_parallel_size > 1:
    defaults += (('tensor-parallel-size', str(config.tensor_parallel_size)), )
  argv += flags(defaults, config.served_name_flag + config.engine_args)
  env.update(_gpu_environment(parent, config, gpus, has_flashinfer))
  return Launch.of(engine_name(index, len(placement.system_ports)), argv, env)


def engine_name(index: int, count: int) -> str:
  """'engine' when there is one, 'engine-0', 'engine-1'... when several."""
  return 'engine' if count == 1 else f'engine-{index}'


def native_vllm_launch(
    config: StackConfig,
    placement: Placement,
    parent: Mapping[str, str],
    gpus: tuple[int, ...] = (),
    gpu_defaults: ServerArgs = (),
    has_flashinfer: bool = False,
    start_cache_dir: Optional[str] = None) -> Launch:
  argv = [
      sys.executable, '-m', 'vllm.entrypoints.openai.api_server',
      '--model', config.model,
      '--host', '127.0.0.1',
      '--port', str(placement.http_port),
  ]  # yapf: disable
  if config.chat_template:
    argv += ['--chat-template', placement.chat_template_file]
  defaults = gpu_defaults
  if config.tensor_parallel_size > 1:
    defaults += (('tensor-parallel-size', str(config.tensor_parallel_size)), )
  argv += flags(defaults, config.served_name_flag + config.engine_args)
  env = _inherited(parent)
  env.update({'PYTHONUNBUFFERED': '1', 'NO_COLOR': '1'})
  env.update(start_cache_environment(start_cache_dir))
  env.update(_gpu_environment(parent, config, gpus, has_flashinfer))
  return Launch.of('server', argv, env)
