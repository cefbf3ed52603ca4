"""Paths on Beam filesystems in a handler's options: ``model_name``
(``gs://bucket/models/name``, staged on each worker) and ``compile_cache``.

Checked when the pipeline is built where that can be done: a path whose
scheme a Beam filesystem here handles, or a local path. A scheme no
filesystem here handles may still be one the workers have (another Beam
extra in their image): it is checked on the worker, where staging fails
with the path and the remedy.
"""

import logging
import re
from typing import Optional

from apache_beam_dynamo.errors import ConfigError

_LOGGER = logging.getLogger(__name__)
_SCHEME = re.compile(r'^([a-zA-Z][-a-zA-Z0-9+.]*)://')


def scheme(path: str) -> Optional[str]:
  """``gs`` for ``gs://b/x``; None for a local path or a hub id."""
  match = _SCHEME.match(path)
  return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
  """Whether ``path`` is on a Beam filesystem other than the local one."""
  return scheme(path) not in (None, 'file')


def _has_filesystem(path: str) -> bool:
  from apache_beam.io.filesystems import FileSystems
  try:
    FileSystems.get_filesystem(path)
    return True
  except ValueError:
    return False


def check_model(model: str) -> None:
  """A remote model directory: a directory path, on a filesystem Beam has
  here (else only logged: the workers may have one)."""
  if not is_remote(model):
    return
  where = model.split('://', 1)[1].strip('/')
  if any(c in model for c in '*?[') or '/' not in where:
    raise ConfigError(
        f'model_name {model!r} must name one model directory '
        '(gs://bucket/models/name), not a bucket or a pattern.')
  if not _has_filesystem(model):
    _LOGGER.warning(
        'No Beam filesystem here handles model_name %r; the workers must '
        'have one (e.g. apache-beam[aws] for s3://), or staging fails there.',
        model)


def compile_cache(name: str, path: Optional[str]) -> None:
  """The ``compile_cache`` option (a config/checks.py field check)."""
  if path is None:
    return
  if not isinstance(path, str) or not path.strip():
    raise ConfigError(
        f'{name} must be a path (gs://bucket/cache or a local '
        f'directory) or None, got {path!r}.')
  if any(c in path for c in '*?['):
    raise ConfigError(f'{name} {path!r} must be a directory, not a pattern.')
  if is_remote(path) and not _has_filesystem(path):
    _LOGGER.warning(
        'No Beam filesystem here handles %s %r; the workers must have one, '
        'or they start without the shared cache.', name, path)
