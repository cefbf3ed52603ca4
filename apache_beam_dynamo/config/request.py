"""How the shared client talks to a stack: concurrency, deadlines, retries."""

import dataclasses
from typing import Optional

from apache_beam_dynamo.config import checks
from apache_beam_dynamo.config.checks import checked

# Default requests in flight per engine. On an H100, 512 gave vLLM 28%
# more tokens/s than 256 (docs/gpu.md). An engine whose max-num-seqs is
# known (a flag, or the GPU's defaults: 512 on an H200, 32 on a T4) gets
# QUEUED_PER_SEQUENCE times that, at most MAX_REQUESTS_PER_ENGINE: a queue
# that starts the next request the moment a sequence finishes, not one
# that times out.
REQUESTS_PER_ENGINE = 512
MAX_REQUESTS_PER_ENGINE = 1024
QUEUED_PER_SEQUENCE = 4


@dataclasses.dataclass(frozen=True)
class RequestConfig:
  """How the shared client talks to the stack.

  Attributes:
    max_concurrent_requests: requests in flight per process; None means,
      per engine of the stack, 4 x the engine's max-num-seqs up to 1,024
      when that is known, else 512: enough to keep each engine's batch full
      and its queue ready.
    request_timeout_s: one request's deadline, generation included.
    max_request_retries: retries of a transient failure (connection refused
      or reset, 429, 5xx, timeout) while the stack reports ready. Waiting for
      a restarting stack does not use them up.
    retry_backoff_s: first retry delay; it doubles up to 30 s.
  """
  max_concurrent_requests: Optional[int] = checked(
      None, checks.optional(checks.positive_int))
  request_timeout_s: float = checked(600.0, checks.positive)
  max_request_retries: int = checked(5, checks.non_negative_int)
  retry_backoff_s: float = checked(0.5, checks.positive)

  def __post_init__(self):
    checks.check_fields(self)

  def concurrency(self, engines: int, max_num_seqs: Optional[int] = None) -> int:
    """Requests in flight for a stack with ``engines`` engines, each running
    at most ``max_num_seqs`` sequences at once (None: the engine's default)."""
    if self.max_concurrent_requests:
      return self.max_concurrent_requests
    per_engine = REQUESTS_PER_ENGINE
    if max_num_seqs:
      per_engine = min(MAX_REQUESTS_PER_ENGINE,
                       QUEUED_PER_SEQUENCE * max_num_seqs)
    return per_engine * engines
