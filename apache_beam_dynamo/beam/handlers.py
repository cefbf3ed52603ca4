"""Beam ModelHandlers: drop-in replacements for apache-beam 2.77's vLLM ones.

The handlers are thin. ``load_model`` leases the machine's stack for this
handler's config (starting it if this is the first user), waits until it
serves and returns the lease: that is the model. ``run_inference`` turns a
batch into OpenAI requests (requests.py), sends them over the lease through
the process's shared client, and wraps the replies in ``PredictionResult``.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from openai.types import Completion
from openai.types.chat import ChatCompletion

from apache_beam_dynamo.beam import requests
from apache_beam_dynamo.beam import settings as handler_settings
from apache_beam_dynamo.beam.metrics import NAMESPACE, HandlerMetrics
from apache_beam_dynamo.beam.progress import PROGRESS
from apache_beam_dynamo.beam.requests import OpenAIChatMessage
from apache_beam_dynamo.client import shared as client
from apache_beam_dynamo.config import chat_template
from apache_beam_dynamo.config import inference_args as args_schema
from apache_beam_dynamo.config.request import RequestConfig
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import DynamoHandlerError, InvalidElementError
from apache_beam_dynamo.runtime.lease import Lease
from apache_beam_dynamo.runtime.registry import registry

__all__ = [
    'OpenAIChatMessage',
    'VLLMCompletionsModelHandler',
    'VLLMChatModelHandler',
    'raise_failed_element',
]

ServerKwargs = Optional[dict[str, Optional[str]]]


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


class _StackModelHandler(ModelHandler[Any, PredictionResult, Lease]):
  """Shared machinery; subclasses say how an element becomes a request."""
  _ROUTE: str
  _ACCEPTED_ARGS: Mapping[str, tuple]
  _encode: Callable[..., bytes]
  _parse: Callable[[bytes], Any]

  def __init__(self, arguments: Mapping[str, Any]):
    self._settings = handler_settings.from_arguments(arguments)
    super().__init__(**dict(self._settings.batching))
    self._resolved_config: Optional[StackConfig] = None
    self._metrics: Optional[HandlerMetrics] = None

  @property
  def stack_config(self) -> StackConfig:
    """What this handler runs on each worker (before its chat template is
    read there)."""
    return self._settings.stack

  # -- ModelHandler ------------------------------------------------------------

  def load_model(self) -> Lease:
    """Leases this machine's stack (starting it if needed), waits until it
    serves, and returns the lease."""
    lease = registry.acquire(self._worker_config(), holder=self)
    try:
      lease.wait_ready()
    except DynamoHandlerError:
      registry.drop(lease, holder=self)  # a retry starts a fresh stack
      raise
    return lease

  def run_inference(
      self,
      batch: Sequence[Any],
      model: Lease,
      inference_args: Optional[dict[str, Any]] = None
  ) -> list[PredictionResult]:
    """Sends one request per element; returns results in input order.

    Failed elements (invalid input, or rejected by the server) are handled
    per ``failed_elements``; a stack that is gone for good fails the batch.
    """
    # This handler copy holds the lease too, as long as it runs batches.
    lease = registry.hold(model, holder=self)
    PROGRESS.begin()
    served_name = self._settings.stack.served_model_name
    use_dynamo = self._settings.stack.use_dynamo
    args = inference_args or {}
    outcomes: list[Any] = [None] * len(batch)
    bodies: list[Optional[bytes]] = []
    for index, element in enumerate(batch):
      try:
        bodies.append(self._encode(
            element, served_name, args, accepted=self._ACCEPTED_ARGS,
            use_dynamo=use_dynamo))
      except InvalidElementError as e:
        bodies.append(None)
        outcomes[index] = e
    stats = client.BatchStats()
    sent = client.send(
        lease, self._ROUTE, bodies, self._parse, self._settings.requests, stats)
    for index, body in enumerate(bodies):
      if body is not None:
        outcomes[index] = sent[index]
    if self._metrics is None:
      self._metrics = HandlerMetrics()
    state = lease.state
    self._metrics.record(stats, outcomes, state.restarts)
    self._metrics.record_stack(state.metrics)
    PROGRESS.done(
        len(batch), sum(isinstance(o, Exception) for o in outcomes))
    if self._settings.failed_elements == 'raise':
      for outcome in outcomes:
        if isinstance(outcome, Exception):
          raise outcome
    return [
        PredictionResult(x, y, served_name) for x, y in zip(batch, outcomes)
    ]

  def validate_inference_args(self, inference_args: Optional[dict[str, Any]]):
    args_schema.validate(
        inference_args,
        self._ACCEPTED_ARGS,
        use_dynamo=self._settings.stack.use_dynamo,
        mocker=self._settings.stack.engine == 'mocker')

  def batch_elements_kwargs(self) -> Mapping[str, Any]:
    """Beam's batching options, with the handler's sizing (settings.py)."""
    return {**super().batch_elements_kwargs(),
            **dict(handler_settings.BATCH_SIZING)}

  def get_postprocess_fns(self) -> list[Callable[[Any], Any]]:
    if self._settings.failed_elements == 'dead_letter':
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

  def _worker_config(self) -> StackConfig:
    """The stack config with the chat template read (once per copy)."""
    if self._resolved_config is None:
      config = self._settings.stack
      if self._settings.chat_template_path is not None:
        config = dataclasses.replace(
            config,
            chat_template=chat_template.read(self._settings.chat_template_path))
      self._resolved_config = config
    return self._resolved_config

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_resolved_config'] = None
    state['_metrics'] = None
    return state


class VLLMCompletionsModelHandler(_StackModelHandler):
  _ROUTE = '/v1/completions'
  _ACCEPTED_ARGS = args_schema.COMPLETION_ARGS
  _encode = staticmethod(requests.completion_body)
  _parse = staticmethod(Completion.model_validate_json)

  def __init__(
      self,
      model_name: str,
      vllm_server_kwargs: ServerKwargs = None,
      *,
      use_dynamo: bool = False,
      dynamo_frontend_kwargs: ServerKwargs = None,
      engine: str = 'vllm',
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      max_batch_weight: Optional[int] = None,
      element_size_fn: Optional[Callable[[Any], int]] = None,
      batch_length_fn: Optional[Callable[[Any], int]] = None,
      batch_bucket_boundaries: Optional[list[int]] = None,
      startup_timeout_s: float = StackConfig.startup_timeout_s,
      max_concurrent_requests: Optional[int] = None,
      request_timeout_s: float = RequestConfig.request_timeout_s,
      max_request_retries: int = RequestConfig.max_request_retries,
      retry_backoff_s: float = RequestConfig.retry_backoff_s,
      max_restarts: int = StackConfig.max_restarts,
      restart_window_s: float = StackConfig.restart_window_s,
      liveness_interval_s: float = StackConfig.liveness_interval_s,
      shutdown_grace_s: float = StackConfig.shutdown_grace_s,
      keep_alive_s: float = StackConfig.keep_alive_s,
      adapt_to_gpu: bool = StackConfig.adapt_to_gpu,
      gpus: Optional[Sequence[int]] = None,
      tensor_parallel_size: int = StackConfig.tensor_parallel_size,
      num_engines: Optional[int] = None,
      router_mode: str = StackConfig.router_mode,
      etcd_binary: Optional[str] = None,
      engine_env: Optional[Mapping[str, str]] = None,
      compile_cache: Optional[str] = None,
      failed_elements: str = 'dead_letter'):
    """RunInference handler for text prompts (OpenAI completions).

    Elements are prompt strings, or dicts with ``"prompt"`` and any request
    parameters of their own, which override ``inference_args``
    (``{'prompt': 'Hi', 'max_tokens': 8, 'guided_json': {...}}``). An
    unknown or wrongly typed key fails that element alone.

    Example::

      prompts | RunInference(VLLMCompletionsModelHandler(
          'Qwen/Qwen3-0.6B', use_dynamo=True),
          inference_args={'max_tokens': 64})

    Args:
      model_name: hub id, local directory, or a directory on any Beam
        filesystem (``gs://bucket/models/name``: staged once per worker
        machine and served as ``name``). With ``engine="mocker"``, a
        directory with config and tokenizer.
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
      The other keyword-only options are described in the README's option
      table and in StackConfig / RequestConfig.
    """
    super().__init__(locals())


class VLLMChatModelHandler(_StackModelHandler):
  _ROUTE = '/v1/chat/completions'
  _ACCEPTED_ARGS = args_schema.CHAT_ARGS
  _encode = staticmethod(requests.chat_body)
  _parse = staticmethod(ChatCompletion.model_validate_json)

  def __init__(
      self,
      model_name: str,
      chat_template_path: Optional[str] = None,
      vllm_server_kwargs: ServerKwargs = None,
      *,
      use_dynamo: bool = False,
      dynamo_frontend_kwargs: ServerKwargs = None,
      engine: str = 'vllm',
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      max_batch_weight: Optional[int] = None,
      element_size_fn: Optional[Callable[[Any], int]] = None,
      batch_length_fn: Optional[Callable[[Any], int]] = None,
      batch_bucket_boundaries: Optional[list[int]] = None,
      startup_timeout_s: float = StackConfig.startup_timeout_s,
      max_concurrent_requests: Optional[int] = None,
      request_timeout_s: float = RequestConfig.request_timeout_s,
      max_request_retries: int = RequestConfig.max_request_retries,
      retry_backoff_s: float = RequestConfig.retry_backoff_s,
      max_restarts: int = StackConfig.max_restarts,
      restart_window_s: float = StackConfig.restart_window_s,
      liveness_interval_s: float = StackConfig.liveness_interval_s,
      shutdown_grace_s: float = StackConfig.shutdown_grace_s,
      keep_alive_s: float = StackConfig.keep_alive_s,
      adapt_to_gpu: bool = StackConfig.adapt_to_gpu,
      gpus: Optional[Sequence[int]] = None,
      tensor_parallel_size: int = StackConfig.tensor_parallel_size,
      num_engines: Optional[int] = None,
      router_mode: str = StackConfig.router_mode,
      etcd_binary: Optional[str] = None,
      engine_env: Optional[Mapping[str, str]] = None,
      compile_cache: Optional[str] = None,
      failed_elements: str = 'dead_letter'):
    """RunInference handler for conversations (OpenAI chat completions).

    Elements are sequences of ``OpenAIChatMessage`` (apache-beam's class or
    ``{'role': ..., 'content': ...}`` dicts work too), or dicts with
    ``"messages"`` and any request parameters of their own, which override
    ``inference_args`` (``{'messages': [...], 'max_tokens': 8}``).

    Args:
      model_name: as for VLLMCompletionsModelHandler.
      chat_template_path: a Jinja chat template, local or on any Beam
        filesystem (gs://...). It reaches the engine through the flag that
        engine accepts (``--custom-jinja-template`` for dynamo.vllm,
        ``--chat-template`` for vLLM's server).
      The other arguments: as for VLLMCompletionsModelHandler.
    """
    super().__init__(locals())
