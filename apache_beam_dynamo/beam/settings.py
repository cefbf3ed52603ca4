"""A handler's constructor arguments as validated, typed settings.

Both handlers take the same keyword arguments; this is the one place that
turns them into a StackConfig (what runs), a RequestConfig (how requests
are sent), the dead-letter mode and Beam's batching arguments. Everything
is checked here, when the pipeline is built.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from apache_beam_dynamo.config import chat_template
from apache_beam_dynamo.config.request import RequestConfig
from apache_beam_dynamo.config.server_args import normalize_server_kwargs
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ConfigError

FAILED_ELEMENT_MODES = ('dead_letter', 'raise', 'return')

# Batches several times the requests in flight keep a server's queue full
# between batches (bench/LOG.md); Beam's own default starts at one element
# and grows, which costs throughput.
DEFAULT_MIN_BATCH_SIZE = 512
DEFAULT_MAX_BATCH_SIZE = 4096

# BatchElements' sizing, as the handlers pass it. Beam fits a batch's time
# as fixed + per element, keeps the fixed part under 5% and jitters sizes
# by 25%. An engine runs a batch in waves of the requests in flight, so the
# last, partial wave of a batch looks like a fixed cost, and the fit chose
# 19 batches of 430-1,026 prompts for 12,288 on an H200, each ending in a
# partial wave (docs/gpu.md). Without the overhead target and the jitter,
# batches double from min_batch_size up to max_batch_size: whole multiples
# of the first batch, so whole waves. A batch still stops growing once it
# would take a minute (slow GPUs).
BATCH_SIZING = (('target_batch_overhead', None),
                ('target_batch_duration_secs', 60),
                ('variance', 0))

BATCHING_ARGS = ('min_batch_size', 'max_batch_size', 'max_batch_duration_secs',
                 'max_batch_weight', 'element_size_fn', 'batch_length_fn',
                 'batch_bucket_boundaries')
_STACK_ARGS = ('startup_timeout_s', 'liveness_interval_s', 'max_restarts',
               'restart_window_s', 'shutdown_grace_s', 'keep_alive_s',
               'adapt_to_gpu', 'tensor_parallel_size', 'num_engines',
               'router_mode', 'etcd_binary', 'compile_cache')
_REQUEST_ARGS = tuple(f.name for f in dataclasses.fields(RequestConfig))


@dataclasses.dataclass(frozen=True)
class HandlerSettings:
  """Attributes:
    stack: what runs on each worker (chat template not read yet).
    requests: how the shared client sends this handler's requests.
    failed_elements: ``dead_letter``, ``raise`` or ``return``.
    chat_template_path: read on the worker into ``stack.chat_template``.
    batching: Beam's batching arguments, with the handler's defaults.
  """
  stack: StackConfig
  requests: RequestConfig
  failed_elements: str
  chat_template_path: Optional[str]
  batching: tuple[tuple[str, Any], ...]


def from_arguments(arguments: Mapping[str, Any]) -> HandlerSettings:
  """Settings from a handler constructor's ``locals()``; raises ConfigError."""
  if arguments['failed_elements'] not in FAILED_ELEMENT_MODES:
    raise ConfigError(
        f'failed_elements must be one of {FAILED_ELEMENT_MODES}, got '
        f"{arguments['failed_elements']!r}.")
  template_path = arguments.get('chat_template_path')
  if template_path is not None:
    chat_template.check_path(template_path)
  stack = StackConfig(
      model=arguments['model_name'],
      use_dynamo=arguments['use_dynamo'],
      engine=arguments['engine'],
      engine_args=normalize_server_kwargs(
          arguments['vllm_server_kwargs'], 'vllm_server_kwargs'),
      frontend_args=normalize_server_kwargs(
          arguments['dynamo_frontend_kwargs'], 'dynamo_frontend_kwargs'),
      engine_env=_engine_env(arguments['engine_env']),
      gpus=_gpus(arguments['gpus']),
      **{name: arguments[name] for name in _STACK_ARGS})
  return HandlerSettings(
      stack=stack,
      requests=RequestConfig(**{name: arguments[name] for name in _REQUEST_ARGS}),
      failed_elements=arguments['failed_elements'],
      chat_template_path=template_path,
      batching=tuple(_batching({name: arguments[name]
                                for name in BATCHING_ARGS}).items()))


def _batching(chosen: dict[str, Any]) -> dict[str, Any]:
  """Beam's batching arguments; unset sizes get the handler's defaults."""
  if chosen.get('max_batch_size') is None:
    chosen['max_batch_size'] = max(
        DEFAULT_MAX_BATCH_SIZE, chosen.get('min_batch_size') or 0)
  if chosen.get('min_batch_size') is None:
    chosen['min_batch_size'] = min(
        DEFAULT_MIN_BATCH_SIZE, chosen['max_batch_size'])
  return chosen


def _engine_env(env: Optional[Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
  if env is None:
    return ()
  if not isinstance(env, Mapping):
    raise ConfigError('engine_env must be a dict of name to value.')
  return tuple(sorted(env.items()))


def _gpus(gpus: Any) -> Optional[tuple[int, ...]]:
  return tuple(gpus) if isinstance(gpus, (list, range)) else gpus
