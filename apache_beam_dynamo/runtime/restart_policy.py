"""How often a failed stack may be restarted, and how long to wait first.

Pure policy, no processes: the supervisor asks before every restart.
"""

import collections
import time
from typing import Callable, Optional

MAX_BACKOFF_S = 30.0


class RestartBudget:
  """At most ``max_restarts`` restarts within any ``window_s``; the wait
  before a restart doubles with each restart in the window (1 s, 2 s, 4 s
  ... up to MAX_BACKOFF_S), so a crash loop does not spin."""
  def __init__(
      self,
      max_restarts: int,
      window_s: float,
      clock: Callable[[], float] = time.monotonic):
    self.max_restarts = max_restarts
    self.window_s = window_s
    self._clock = clock
    self._times: collections.deque[float] = collections.deque()

  @property
  def used(self) -> int:
    """Restarts counted in the current window."""
    self._forget_old(self._clock())
    return len(self._times)

  def spend(self) -> Optional[float]:
    """Records a restart now; returns the delay to wait before it, or None
    when the budget is spent (nothing is recorded then)."""
    now = self._clock()
    self._forget_old(now)
    if len(self._times) >= self.max_restarts:
      return None
    self._times.append(now)
    return min(2.0**(len(self._times) - 1), MAX_BACKOFF_S)

  def _forget_old(self, now: float) -> None:
    while self._times and now - self._times[0] > self.window_s:
      self._times.popleft()
