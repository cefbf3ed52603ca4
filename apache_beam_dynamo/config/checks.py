"""Declared constraints on config fields.

A field says what it accepts (``checked(default, positive)``); one loop,
``check_fields``, enforces every declaration when a config is built. Rules
that relate several fields stay in the config's ``__post_init__``.
"""

import dataclasses
from typing import Any, Callable

from apache_beam_dynamo.errors import ConfigError

Check = Callable[[str, Any], None]


def checked(default: Any, check: Check) -> Any:
  """A dataclass field with ``default`` whose value ``check`` accepts."""
  return dataclasses.field(default=default, metadata={'check': check})


def check_fields(config: Any) -> None:
  """Runs every field's declared check; raises ConfigError."""
  for field in dataclasses.fields(config):
    check = field.metadata.get('check')
    if check is not None:
      check(field.name, getattr(config, field.name))


def _is_number(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_int(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, int)


def positive(name: str, value: Any) -> None:
  if not _is_number(value):
    raise ConfigError(f'{name} must be a number, got {value!r}.')
  if value <= 0:
    raise ConfigError(f'{name} must be positive, got {value!r}.')


def non_negative(name: str, value: Any) -> None:
  if not _is_number(value) or value < 0:
    raise ConfigError(f'{name} must be a number >= 0, got {value!r}.')


def positive_int(name: str, value: Any) -> None:
  if not _is_int(value) or value < 1:
    raise ConfigError(f'{name} must be a positive integer, got {value!r}.')


def non_negative_int(name: str, value: Any) -> None:
  if not _is_int(value) or value < 0:
    raise ConfigError(f'{name} must be an integer >= 0, got {value!r}.')


def boolean(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ConfigError(f'{name} must be True or False, got {value!r}.')


def non_empty_string(name: str, value: Any) -> None:
  if not isinstance(value, str) or not value.strip():
    raise ConfigError(f'{name} must be a non-empty string, got {value!r}.')


def one_of(*choices: str) -> Check:
  def check(name: str, value: Any) -> None:
    if value not in choices:
      raise ConfigError(f'{name} must be one of {choices}, got {value!r}.')
  return check


def optional(inner: Check) -> Check:
  """``inner``, or None."""
  def check(name: str, value: Any) -> None:
    if value is not None:
      inner(name, value)
  return check


def gpu_ids(name: str, value: Any) -> None:
  if (not isinstance(value, tuple) or not value or
      any(not _is_int(g) or g < 0 for g in value)):
    raise ConfigError(
        f'{name} must be a non-empty list of GPU ids (ints >= 0), got '
        f'{value!r}.')
  repeated = sorted({g for g in value if value.count(g) > 1})
  if repeated:
    raise ConfigError(
        f'{name} lists GPU {repeated} more than once: engines would '
        'overlap. List each GPU once.')


def string_pairs(name: str, value: Any) -> None:
  for key, item in value:
    if not isinstance(key, str) or not key or not isinstance(item, str):
      raise ConfigError(
          f'{name} must map names to strings, got {key!r}: {item!r}.')
