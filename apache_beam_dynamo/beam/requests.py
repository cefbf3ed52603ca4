"""Input elements as OpenAI request bodies.

A completion element is a prompt string, or a dict with ``"prompt"``; a
chat element is a sequence of messages (``OpenAIChatMessage`` or
``{"role", "content"}`` dicts), or a dict with ``"messages"``. A dict may
also carry request parameters (the names and types ``inference_args``
accepts), which override ``inference_args`` for that element. An element
that cannot become a request raises InvalidElementError, which fails that
element alone.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam_dynamo.config import inference_args as args_schema
from apache_beam_dynamo.errors import InvalidElementError

CHAT_ROLES = ('system', 'user', 'assistant', 'developer', 'tool')


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


def completion_body(
    element: Any,
    model: str,
    args: Mapping[str, Any],
    *,
    accepted: Mapping[str, tuple] = args_schema.COMPLETION_ARGS,
    use_dynamo: bool = True) -> bytes:
  """The body of ``/v1/completions`` for one element."""
  if isinstance(element, Mapping):
    if 'messages' in element and 'prompt' not in element:
      raise InvalidElementError(
          'A completion element has a "prompt", not "messages" (chat '
          'elements go to VLLMChatModelHandler).')
    element, args = _split(element, 'prompt', args, accepted, use_dynamo)
  if not isinstance(element, str):
    raise InvalidElementError(
        f'A completion prompt must be a str, got {type(element).__name__}.')
  if not element:
    raise InvalidElementError('A completion prompt must not be empty.')
  return _body({'prompt': element}, model, args)


def chat_body(
    element: Any,
    model: str,
    args: Mapping[str, Any],
    *,
    accepted: Mapping[str, tuple] = args_schema.CHAT_ARGS,
    use_dynamo: bool = True) -> bytes:
  """The body of ``/v1/chat/completions`` for one element."""
  if isinstance(element, Mapping):
    element, args = _split(element, 'messages', args, accepted, use_dynamo)
  if isinstance(element, (str, bytes)) or not isinstance(element, Sequence):
    raise InvalidElementError(
        'A chat element must be a sequence of OpenAIChatMessage (or a dict '
        f'with "messages"), got {type(element).__name__}.')
  if not element:
    raise InvalidElementError('A chat element must have at least one message.')
  return _body({'messages': [_message(m) for m in element]}, model, args)


def _split(
    element: Mapping[str, Any], content_key: str, args: Mapping[str, Any],
    accepted: Mapping[str, tuple],
    use_dynamo: bool) -> tuple[Any, Mapping[str, Any]]:
  """A dict element's content and its request parameters over ``args``;
  raises InvalidElementError naming a missing, unknown or mistyped key."""
  if content_key not in element:
    raise InvalidElementError(
        f'A dict element needs a {content_key!r} key; it has '
        f'{", ".join(map(repr, element)) or "none"}.')
  params = {k: v for k, v in element.items() if k != content_key}
  if not params:
    return element[content_key], args
  problem = args_schema.find_problem(
      params, accepted, use_dynamo=use_dynamo, where='element')
  if problem:
    raise InvalidElementError(problem)
  return element[content_key], _merge(args, params)


def _merge(args: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
  """``args`` overridden by an element's ``params``, ``extra_body`` too."""
  merged = {**args, **params}
  extra = {
      k: v for k, v in (args.get('extra_body') or {}).items() if k not in params
  }
  extra.update(params.get('extra_body') or {})
  if extra:
    merged['extra_body'] = extra
  return merged


def _body(fields: dict[str, Any], model: str, args: Mapping[str, Any]) -> bytes:
  extra = dict(args)
  extra.update(extra.pop('extra_body', None) or {})  # the openai SDK's way
  return json.dumps({'model': model, **fields, **extra}).encode()


def _message(message: Any) -> dict[str, str]:
  if isinstance(message, Mapping):
    role, content = message.get('role'), message.get('content')
  else:
    role = getattr(message, 'role', None)
    content = getattr(message, 'content', None)
  if role not in CHAT_ROLES:
    raise InvalidElementError(
        f'A chat message role must be one of {", ".join(CHAT_ROLES)}; got '
        f'{role!r}.')
  if not isinstance(content, str):
    raise InvalidElementError(
        f'A chat message content must be a str; got {type(content).__name__}.')
  return {'role': role, 'content': content}
