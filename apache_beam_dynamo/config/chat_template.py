"""``chat_template_path``: checked when the pipeline is built, read on the
worker, through any Beam filesystem (local, gs://...)."""

import os

from apache_beam.io.filesystems import FileSystems

from apache_beam_dynamo.errors import ConfigError


def check_path(path: str) -> None:
  """Fails on the user's machine when no worker could read ``path``."""
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


def read(path: str) -> str:
  """The template text, on the worker."""
  try:
    with FileSystems.open(path) as f:
      return f.read().decode('utf-8')
  except Exception as e:  # any filesystem raises its own errors
    raise ConfigError(
        f'Could not read chat_template_path {path!r} on the worker: {e}') from e
