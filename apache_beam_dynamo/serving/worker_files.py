"""What a stack needs on local disk before its engines start, and leaves
behind for the next worker.

* ``model_name`` on a Beam filesystem (``gs://...``): staged to this
  machine (storage/model_stage.py); the stack runs the local copy, served
  under the remote directory's basename.
* ``compile_cache``: the start cache (serving/start_cache.py), restored
  before the engines start and published once the stack first became
  ready, on a thread of its own; ``wait`` joins it when the stack stops.
"""

import dataclasses
import logging
import threading
from typing import Optional

from apache_beam_dynamo.config import remote_paths
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ComponentFailure, ConfigError, StorageError
from apache_beam_dynamo.serving import start_cache
from apache_beam_dynamo.serving.machine import Machine
from apache_beam_dynamo.storage import model_stage

_LOGGER = logging.getLogger(__name__)

# How long a stopping stack waits for its start cache upload.
PUBLISH_WAIT_S = 300.0


class WorkerFiles:
  """A stack's staged model and start cache."""
  def __init__(self, requested: StackConfig):
    self.requested = requested
    self.cache: Optional[start_cache.StartCache] = None
    self._publisher: Optional[threading.Thread] = None

  @property
  def start_cache_dir(self) -> Optional[str]:
    return self.cache.local_dir if self.cache is not None else None

  def prepare(self, machine: Machine) -> StackConfig:
    """Stages the model and restores the start cache; returns the config
    the stack runs (the model's local copy). Raises ComponentFailure when
    the model cannot be staged; start cache problems are only WARNINGs."""
    config = self.requested
    if remote_paths.is_remote(config.model):
      try:
        config = dataclasses.replace(
            config, model=model_stage.stage(config.model))
      except (StorageError, ConfigError, OSError) as e:
        raise ComponentFailure(
            'engine', f'could not stage model_name {config.model!r} on this '
            f'worker: {e}',
            remedy='model_name must be a model directory (config, tokenizer, '
            'weights) that every worker can read.') from e
    if config.compile_cache and self.cache is None:
      try:
        self.cache = start_cache.StartCache(
            config.compile_cache,
            start_cache.cache_key(config, machine, self.requested.model,
                                  config.model))
        self.cache.prepare()
      except Exception as e:  # pylint: disable=broad-except
        _LOGGER.warning(
            'Start cache %s not used (%s); starting cold.',
            config.compile_cache, e)
        self.cache = None
    return config

  def publish_in_background(self) -> None:
    """Publishes the start cache (once) without holding up the stack."""
    if self.cache is None or self._publisher is not None:
      return
    self._publisher = threading.Thread(
        target=self.cache.publish, name='abd-start-cache', daemon=True)
    self._publisher.start()

  def wait(self) -> None:
    if self._publisher is not None and self._publisher.is_alive():
      self._publisher.join(PUBLISH_WAIT_S)
      if self._publisher.is_alive():
        _LOGGER.warning('Start cache upload still running after %.0f s; '
                        'leaving it unpublished.', PUBLISH_WAIT_S)
