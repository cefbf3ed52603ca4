"""Input elements as OpenAI request bodies.

A completion element is a prompt string; a chat element is a sequence of
messages (``OpenAIChatMessage`` or ``{"role", "content"}`` dicts). An
element that cannot become a request raises InvalidElementError, which
fails that element alone.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

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


def completion_body(element: Any, model: str, args: Mapping[str, Any]) -> bytes:
  if not isinstance(element, str):
    raise InvalidElementError(
        f'A completion prompt must be a str, got {type(element).__name__}.')
  if not element:
    raise InvalidElementError('A completion prompt must not be empty.')
  return _body({'prompt': element}, model, args)


def chat_body(element: Any, model: str, args: Mapping[str, Any]) -> bytes:
  if isinstance(element, (str, bytes)) or not isinstance(element, Sequence):
    raise InvalidElementError(
        'A chat element must be a sequence of OpenAIChatMessage, got '
        f'{type(element).__name__}.')
  if not element:
    raise InvalidElementError('A chat element must have at least one message.')
  return _body({'messages': [_message(m) for m in element]}, model, args)


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
