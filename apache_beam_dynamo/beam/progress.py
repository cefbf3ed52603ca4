"""A short progress line on long runs.

Every SDK process logs one INFO record of ``apache_beam_dynamo.progress``
every ``INTERVAL_S`` while its handlers send requests: elements done, the
rate, failures. A run shorter than that logs none; a pause longer than that
starts the count again (the next pipeline in the same process).
"""

import logging
import threading
import time
from typing import Optional

_LOGGER = logging.getLogger('apache_beam_dynamo.progress')

INTERVAL_S = 15.0


class Progress:
  """Counts a process's elements; logs a line every ``interval_s``."""
  def __init__(self, interval_s: float = INTERVAL_S,
               logger: logging.Logger = _LOGGER):
    self._interval_s = interval_s
    self._logger = logger
    self._lock = threading.Lock()
    self._started: Optional[float] = None
    self._last_activity = 0.0
    self._next_report = 0.0
    self._elements = 0
    self._failed = 0

  def begin(self, now: Optional[float] = None) -> None:
    """A batch starts (marks the start of a run after a pause)."""
    now = time.monotonic() if now is None else now
    with self._lock:
      if self._started is None or now - self._last_activity > self._interval_s:
        self._started, self._elements, self._failed = now, 0, 0
        self._next_report = now + self._interval_s
      self._last_activity = now

  def done(self, elements: int, failed: int,
           now: Optional[float] = None) -> None:
    """A batch finished; logs a line when one is due."""
    now = time.monotonic() if now is None else now
    with self._lock:
      if self._started is None:
        return
      self._elements += elements
      self._failed += failed
      self._last_activity = now
      if now < self._next_report:
        return
      self._next_report = now + self._interval_s
      elapsed = max(now - self._started, 1e-9)
      line = (self._elements, elapsed, self._elements / elapsed, self._failed)
    self._logger.info(
        '%d elements done in %.0f s (%.0f/s), %d failed', *line)


PROGRESS = Progress()
