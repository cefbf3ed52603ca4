"""Beam ModelHandlers: drop-in replacements for apache-beam 2.77's vLLM ones.

The handlers are thin. ``load_model`` leases the machine's stack for this
config (starting it if this is the first user) and waits until it serves;
``run_inference`` turns a batch into OpenAI requests, sends them through the
process's shared client and wraps the replies in ``PredictionResult``.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from openai.types import Completion
from openai.types.chat import ChatCompletion

from apache_beam_dynamo import client
from apache_beam_dynamo import inference_args as args_schema
from apache_beam_dynamo.config import (
    RequestConfig, StackConfig, normalize_server_kwargs)
from apache_beam_dynamo.errors import (
    ConfigError, InvalidElementError)
from apache_beam_dynamo.metrics import NAMESPACE, HandlerMetrics
from apache_beam_dynamo.shared_stack import SharedStack, registry

__all__ = [
    'OpenAIChatMessage',
    'VLLMCompletionsModelHandler',
    'VLLMChatModelHandler',
    'raise_failed_element',
]

FAILED_ELEMENT_MODES = ('dead_letter', 'raise', 'return')

_STACK_OPTIONS = frozenset(
    f.name for f in dataclasses.fields(StackConfig)) - {
        'model', 'use_dynamo', 'engine', 'engine_args', 'frontend_args',
        'chat_template'
    }
_REQUEST_OPTIONS = frozenset(f.name for f in dataclasses.fields(RequestConfig))
_HANDLER_OPTIONS = frozenset({'failed_elements'})


@dataclasses.dataclass(frozen=True)
class OpenAIChatMessage:
  """One message of a conversation (same shape as apache-beam's class).

  Attributes:
    role: who sent it: ``system``, ``user``, ``assistant``, ``developer`` or
      ``tool``.
    content: the text of the message.
  """
  role: str
  content: str


_CHAT_ROLES = ('system', 'user', 'assistant', 'developer', 'tool')


def raise_failed_element(result):
  """Postprocessing step that turns a failed element into an exception.

  With ``failed_elements="dead_letter"`` the handler adds it itself. Add it
  to an outer handler (e.g. ``KeyedModelHandler(...).with_postprocess_fn``)
  when the inner handler uses ``failed_elements="return"``.
  """
  prediction = result if isinstance(result, PredictionResult) else result[1]
  if isinstance(prediction.inference, Exception):
    raise prediction.inference
  return result


def _check_chat_template_path(path: str) -> None:
  if not isinstance(path, str) or not path:
    raise ConfigError(f'chat_template_path must be a path, got {path!r}.')
  if FileSystems.get_scheme(path) is None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
      raise ConfigError(
          f'chat_template_path {path!r} is not a readable file. Give a local '
          'file or a path on any Beam filesystem (e.g. gs://...) that the '
          'workers can read.')
    return
  try:
    FileSystems.get_filesystem(path)
  except ValueError as e:
    raise ConfigError(
        f'chat_template_path {path!r}: no Beam filesystem handles it ({e}).'
    ) from e


def _read_chat_template(path: str) -> str:
  try:
    with FileSystems.open(path) as f:
      return f.read().decode('utf-8')
  except Exception as e:  # any filesystem raises its own errors
    raise ConfigError(
        f'Could not read chat_template_path {path!r} on the worker: {e}') from e


# Batches several times the requests in flight keep a server's queue full
# between batches (bench/LOG.md); Beam's own default starts at one element
# and grows, which costs throughput.
DEFAULT_MIN_BATCH_SIZE = 512
DEFAULT_MAX_BATCH_SIZE = 2048


# Beam's batching arguments, as keyword-only parameters of both handlers.
_BATCHING_ARGS = ('min_batch_size', 'max_batch_size', 'max_batch_duration_secs',
                  'max_batch_weight', 'element_size_fn', 'batch_length_fn',
                  'batch_bucket_boundaries')


def _batching_args(arguments: Mapping[str, Any]) -> dict[str, Any]:
  """The batching arguments among a handler constructor's ``locals()``."""
  return {name: arguments[name] for name in _BATCHING_ARGS}


def _batching_with_defaults(batching: dict[str, Any]) -> dict[str, Any]:
  """Beam's batching arguments; unset sizes get the handler's defaults."""
  chosen = dict(batching)
  if chosen.get('max_batch_size') is None:
    chosen['max_batch_size'] = max(
        DEFAULT_MAX_BATCH_SIZE, chosen.get('min_batch_size') or 0)
  if chosen.get('min_batch_size') is None:
    chosen['min_batch_size'] = min(
        DEFAULT_MIN_BATCH_SIZE, chosen['max_batch_size'])
  return chosen


def _stack_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """The StackConfig fields among the handler's options, in config types."""
  stack_options = {k: v for k, v in options.items() if k in _STACK_OPTIONS}
  env = stack_options.pop('engine_env', None)
  if env is not None:
    if not isinstance(env, Mapping):
      raise ConfigError('engine_env must be a dict of name to value.')
    stack_options['engine_env'] = tuple(sorted(env.items()))
  gpus = stack_options.get('gpus')
  if isinstance(gpus, (list, range)):
    stack_options['gpus'] = tuple(gpus)
  return stack_options


class _StackModelHandler(ModelHandler[Any, PredictionResult, SharedStack]):
  """Shared machinery; subclasses say how an element becomes a request."""
  _ROUTE: str
  _ACCEPTED_ARGS: Mapping[str, tuple]

  def __init__(
      self,
      model_name: str,
      vllm_server_kwargs: Optional[dict[str, Optional[str]]],
      chat_template_path: Optional[str],
      use_dynamo: bool,
      dynamo_frontend_kwargs: Optional[dict[str, Optional[str]]],
      engine: str,
      batching: dict[str, Any],
      options: dict[str, Any]):
    super().__init__(**_batching_with_defaults(batching))
    unknown = set(options) - _STACK_OPTIONS - _REQUEST_OPTIONS - _HANDLER_OPTIONS
    if unknown:
      raise ConfigError(
          f'Unknown option(s) {", ".join(sorted(unknown))}. Accepted: '
          f'{", ".join(sorted(_STACK_OPTIONS | _REQUEST_OPTIONS | _HANDLER_OPTIONS))}.'
      )
    stack_options = _stack_options(options)
    if chat_template_path is not None:
      _check_chat_template_path(chat_template_path)
    self._stack_config = StackConfig(
        model=model_name,
        use_dynamo=use_dynamo,
        engine=engine,
        engine_args=normalize_server_kwargs(
            vllm_server_kwargs, 'vllm_server_kwargs'),
        frontend_args=normalize_server_kwargs(
            dynamo_frontend_kwargs, 'dynamo_frontend_kwargs'),
        **stack_options)
    self._request_config = RequestConfig(
        **{k: v for k, v in options.items() if k in _REQUEST_OPTIONS})
    self._chat_template_path = chat_template_path
    self._failed_elements = options.get('failed_elements', 'dead_letter')
    if self._failed_elements not in FAILED_ELEMENT_MODES:
      raise ConfigError(
          f'failed_elements must be one of {FAILED_ELEMENT_MODES}, got '
          f'{self._failed_elements!r}.')
    self._resolved_config: Optional[StackConfig] = None
    self._metrics: Optional[HandlerMetrics] = None

  # -- ModelHandler ------------------------------------------------------------

  def load_model(self) -> SharedStack:
    """Leases this machine's stack (starting it if needed) and waits for it."""
    stack = self._lease()
    stack.wait_ready()
    return stack

  def run_inference(
      self,
      batch: Sequence[Any],
      model: SharedStack,
      inference_args: Optional[dict[str, Any]] = None
  ) -> list[PredictionResult]:
    """Sends one request per element; returns results in input order.

    Failed elements (invalid input, or rejected by the server) are handled
    per ``failed_elements``; a stack that is gone for good fails the batch.
    """
    del model  # the lease below is the same stack, and keeps it alive
    stack = self._lease()
    extra = dict(inference_args or {})
    outcomes: list[Any] = [None] * len(batch)
    bodies: list[Optional[bytes]] = []
    for index, element in enumerate(batch):
      try:
        bodies.append(self._encode(element, extra))
      except InvalidElementError as e:
        bodies.append(None)
        outcomes[index] = e
    stats = client.BatchStats()
    sent = client.send(
        stack, self._ROUTE, bodies, self._parse, self._request_config, stats)
    for index, body in enumerate(bodies):
      if body is not None:
        outcomes[index] = sent[index]
    if self._metrics is None:
      self._metrics = HandlerMetrics()
    self._metrics.record(stats, outcomes, stack.state.restarts)
    if self._failed_elements == 'raise':
      for outcome in outcomes:
        if isinstance(outcome, Exception):
          raise outcome
    model_id = self._stack_config.served_model_name
    return [PredictionResult(x, y, model_id) for x, y in zip(batch, outcomes)]

  def validate_inference_args(self, inference_args: Optional[dict[str, Any]]):
    args_schema.validate(
        inference_args,
        self._ACCEPTED_ARGS,
        use_dynamo=self._stack_config.use_dynamo,
        mocker=self._stack_config.engine == 'mocker')

  def get_postprocess_fns(self) -> list[Callable[[Any], Any]]:
    if self._failed_elements == 'dead_letter':
      return [raise_failed_element]
    return []

  def get_metrics_namespace(self) -> str:
    return NAMESPACE

  def share_model_across_processes(self) -> bool:
    """False on purpose: the handler shares one stack per machine itself.

    Beam's cross-process sharing would host the stack in one SDK process
    and never release it; the handler's own per-machine supervisor gives
    every SDK process a lease on one stack and stops that stack when the
    last of them is done.
    """
    return False

  # -- helpers -----------------------------------------------------------------

  def _lease(self) -> SharedStack:
    if self._resolved_config is None:
      config = self._stack_config
      if self._chat_template_path is not None:
        config = dataclasses.replace(
            config,
            chat_template=_read_chat_template(self._chat_template_path))
      self._resolved_config = config
    return registry.acquire(self._resolved_config, holder=self)

  def _body(self, fields: dict[str, Any], extra: dict[str, Any]) -> bytes:
    extra = dict(extra)
    extra.update(extra.pop('extra_body', None) or {})  # the openai SDK's way
    payload = {'model': self._stack_config.served_model_name, **fields, **extra}
    return json.dumps(payload).encode()

  def _encode(self, element: Any, extra: dict[str, Any]) -> bytes:
    raise NotImplementedError

  @staticmethod
  def _parse(body: bytes):
    raise NotImplementedError

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_resolved_config'] = None
    state['_metrics'] = None
    return state


class VLLMCompletionsModelHandler(_StackModelHandler):
  _ROUTE = '/v1/completions'
  _ACCEPTED_ARGS = args_schema.COMPLETION_ARGS

  def __init__(
      self,
      model_name: str,
      vllm_server_kwargs: Optional[dict[str, Optional[str]]] = None,
      *,
      use_dynamo: bool = False,
      dynamo_frontend_kwargs: Optional[dict[str, Optional[str]]] = None,
      engine: str = 'vllm',
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      max_batch_weight: Optional[int] = None,
      element_size_fn: Optional[Callable[[Any], int]] = None,
      batch_length_fn: Optional[Callable[[Any], int]] = None,
      batch_bucket_boundaries: Optional[list[int]] = None,
      **options):
    """RunInference handler for text prompts (OpenAI completions).

    Example::

      prompts | RunInference(VLLMCompletionsModelHandler(
          'Qwen/Qwen3-0.6B', use_dynamo=True),
          inference_args={'max_tokens': 64})

    Args:
      model_name: hub id or local directory of the model (with
        ``engine="mocker"``, a local directory with config and tokenizer).
      vllm_server_kwargs: flags for the engine: ``dynamo.vllm`` (or
        ``dynamo.mocker``) with ``use_dynamo=True``, else vLLM's OpenAI
        server. ``{'max-num-seqs': '32', 'enforce-eager': None}``.
      use_dynamo: serve through the embedded NVIDIA Dynamo stack (etcd,
        ``dynamo.frontend`` and an engine) instead of vLLM's own server.
      dynamo_frontend_kwargs: flags for ``dynamo.frontend``.
      engine: ``"vllm"`` (GPU) or ``"mocker"`` (Dynamo's CPU stand-in; needs
        ``use_dynamo=True``).
      min_batch_size, max_batch_size, max_batch_duration_secs,
      max_batch_weight, element_size_fn, batch_length_fn,
      batch_bucket_boundaries: Beam's batching options.
      **options: keyword-only options, see the README's option table:
        startup_timeout_s, max_concurrent_requests, request_timeout_s,
        max_request_retries, retry_backoff_s, max_restarts,
        restart_window_s, liveness_interval_s, shutdown_grace_s,
        keep_alive_s, etcd_binary, engine_env, failed_elements.
    """
    super().__init__(
        model_name,
        vllm_server_kwargs,
        None,
        use_dynamo,
        dynamo_frontend_kwargs,
        engine,
        _batching_args(locals()),
        options)

  def _encode(self, element: Any, extra: dict[str, Any]) -> bytes:
    if not isinstance(element, str):
      raise InvalidElementError(
          f'A completion prompt must be a str, got {type(element).__name__}.')
    if not element:
      raise InvalidElementError('A completion prompt must not be empty.')
    return self._body({'prompt': element}, extra)

  @staticmethod
  def _parse(body: bytes) -> Completion:
    return Completion.model_validate_json(body)


class VLLMChatModelHandler(_StackModelHandler):
  _ROUTE = '/v1/chat/completions'
  _ACCEPTED_ARGS = args_schema.CHAT_ARGS

  def __init__(
      self,
      model_name: str,
      chat_template_path: Optional[str] = None,
      vllm_server_kwargs: Optional[dict[str, Optional[str]]] = None,
      *,
      use_dynamo: bool = False,
      dynamo_frontend_kwargs: Optional[dict[str, Optional[str]]] = None,
      engine: str = 'vllm',
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      max_batch_weight: Optional[int] = None,
      element_size_fn: Optional[Callable[[Any], int]] = None,
      batch_length_fn: Optional[Callable[[Any], int]] = None,
      batch_bucket_boundaries: Optional[list[int]] = None,
      **options):
    """RunInference handler for conversations (OpenAI chat completions).

    Elements are sequences of ``OpenAIChatMessage`` (apache-beam's class or
    ``{'role': ..., 'content': ...}`` dicts work too).

    Args:
      model_name: as for VLLMCompletionsModelHandler.
      chat_template_path: a Jinja chat template, local or on any Beam
        filesystem (gs://...). It reaches the engine through the flag that
        engine accepts (``--custom-jinja-template`` for dynamo.vllm,
        ``--chat-template`` for vLLM's server).
      vllm_server_kwargs, use_dynamo, dynamo_frontend_kwargs, engine, the
      batching options and **options: as for VLLMCompletionsModelHandler.
    """
    super().__init__(
        model_name,
        vllm_server_kwargs,
        chat_template_path,
        use_dynamo,
        dynamo_frontend_kwargs,
        engine,
        _batching_args(locals()),
        options)

  def _encode(self, element: Any, extra: dict[str, Any]) -> bytes:
    if isinstance(element, (str, bytes)) or not isinstance(element, Sequence):
      raise InvalidElementError(
          'A chat element must be a sequence of OpenAIChatMessage, got '
          f'{type(element).__name__}.')
    if not element:
      raise InvalidElementError('A chat element must have at least one message.')
    return self._body({'messages': [_message(m) for m in element]}, extra)

  @staticmethod
  def _parse(body: bytes) -> ChatCompletion:
    return ChatCompletion.model_validate_json(body)


def _message(message: Any) -> dict[str, str]:
  if isinstance(message, Mapping):
    role, content = message.get('role'), message.get('content')
  else:
    role = getattr(message, 'role', None)
    content = getattr(message, 'content', None)
  if role not in _CHAT_ROLES:
    raise InvalidElementError(
        f'A chat message role must be one of {", ".join(_CHAT_ROLES)}; got '
        f'{role!r}.')
  if not isinstance(content, str):
    raise InvalidElementError(
        f'A chat message content must be a str; got {type(content).__name__}.')
  return {'role': role, 'content': content}
