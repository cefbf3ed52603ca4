"""The ``compile_cache`` option: a start cache shared across workers.

A cold engine start spends 40-45 s filling vLLM's cache
(``VLLM_CACHE_ROOT``: torch.compile artifacts, model inspection) and
Triton's (``TRITON_CACHE_DIR``) (docs/gpu.md). With ``compile_cache`` set,
the engines get both under one local directory per key, on this machine
shared by every stack with that key: ``<cache dir>/start-cache/<digest>/``
(``vllm/``, ``triton/``). Before the first stack of a key starts on a
machine, an entry for the key is restored from ``compile_cache`` if one
verifies; after a stack that did not restore one became ready, its cache is
published once (storage/cache_entries.py). Any problem with the shared
cache is a WARNING and a cold start, never a failed job.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from typing import Optional

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.serving import commands
from apache_beam_dynamo.serving.machine import Machine
from apache_beam_dynamo.storage import cache_entries
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local

_LOGGER = logging.getLogger(__name__)

_VERSIONED = ('vllm', 'ai-dynamo', 'torch', 'triton')
# engine_env variables that can change what gets compiled (attention
# backend, compile level...). Others (HF_TOKEN...) stay out of the key,
# which is written into every entry's manifest.
_COMPILE_ENV_PREFIXES = ('VLLM_', 'TORCH', 'TRITON_', 'CUDA_', 'NVIDIA_')


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _config_digest(model_dir: str) -> Optional[str]:
  try:
    with open(os.path.join(model_dir, 'config.json'), 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def cache_key(config: StackConfig, machine: Machine, model: str,
              model_dir: str) -> dict:
  """What a start cache entry depends on: the model (as named by the user,
  and its config.json), the engine program and its flags, the GPU, the
  tensor parallel size, the engine_env variables that can change what is
  compiled, and the versions of what compiles."""
  if config.engine == 'mocker':
    engine = 'dynamo.mocker'
  else:
    engine = 'dynamo.vllm' if config.use_dynamo else 'vllm-server'
  flags = commands.with_defaults(machine.gpu_defaults, config.engine_args)
  return {
      'model': model,
      'model_config_sha256': _config_digest(model_dir),
      'engine': engine,
      'engine_args': sorted([f, v] for f, v in flags),
      'gpu': machine.gpu_name or ('cpu' if config.engine == 'mocker' else None),
      'tensor_parallel_size': config.tensor_parallel_size,
      'engine_env': sorted([name, value] for name, value in config.engine_env
                           if name.startswith(_COMPILE_ENV_PREFIXES)),
      'versions': {p: _version(p) for p in _VERSIONED},
      'python': '%d.%d' % sys.version_info[:2],
  }


class StartCache:
  """One stack's use of the shared start cache.

  ``prepare()`` before the engines start (restores an entry into the local
  directory when this machine has none yet); ``publish()`` once the stack
  is ready. Neither raises.
  """
  def __init__(self, url: str, key: dict):
    self.url = url.rstrip('/')
    self.key = key
    self.digest = local.key_digest(json.dumps(key, sort_keys=True))
    self.remote = files.join(self.url, self.digest)
    self.local_dir = os.path.join(
        local.cache_root(), 'start-cache', self.digest)
    self.restored: Optional[local.Manifest] = None
    self._bad: frozenset = frozenset()

  def prepare(self) -> None:
    with local.exclusive(self.local_dir + '.lock'):
      if os.path.isdir(self.local_dir):
        _LOGGER.info('Start cache %s: this machine has it already.',
                     self.digest)
      else:
        self._restore()
      for sub in ('vllm', 'triton'):
        os.makedirs(os.path.join(self.local_dir, sub), mode=0o700,
                    exist_ok=True)

  def _restore(self) -> None:
    started = time.monotonic()
    try:
      self.restored, bad = cache_entries.restore(self.remote, self.local_dir)
      self._bad = frozenset(bad)
    except Exception as e:  # pylint: disable=broad-except
      _LOGGER.warning(
          'Start cache %s could not be read (%s); starting cold.', self.remote,
          e)
      return
    if self.restored is None:
      _LOGGER.warning(
          'Start cache %s: no entry for this key yet; starting cold (this '
          'worker publishes one once ready).', self.remote)
    else:
      _LOGGER.info(
          'Start cache %s: restored %d files (%.1f MB) from entry %s in '
          '%.1f s.', self.remote, len(self.restored.files),
          self.restored.total_bytes / 1e6, self.restored.writer,
          time.monotonic() - started)

  def publish(self) -> None:
    if self.restored is not None:
      return
    started = time.monotonic()
    try:
      manifest = cache_entries.publish(
          self.remote, self.local_dir, self.key, self._bad)
    except Exception as e:  # pylint: disable=broad-except
      _LOGGER.warning('Start cache %s: publishing failed (%s); the next '
                      'cold worker will try again.', self.remote, e)
      return
    if manifest is not None:
      _LOGGER.info(
          'Start cache %s: published %d files (%.1f MB) as entry %s in '
          '%.1f s.', self.remote, len(manifest.files),
          manifest.total_bytes / 1e6, manifest.writer,
          time.monotonic() - started)
