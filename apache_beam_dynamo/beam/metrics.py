"""Beam metrics for the handlers, in RunInference's metrics namespace.

Beam metrics are recorded per thread, so they are updated from the thread
that runs ``run_inference`` (never from the client's event loop thread).
Besides the client's own counts, the stack's metrics as the supervisor last
sampled them (serving/stack_metrics.py) become gauges and distributions.
"""

from typing import Mapping, Optional

from apache_beam.metrics.metric import Metrics

from apache_beam_dynamo.client.shared import BatchStats
from apache_beam_dynamo.serving import stack_metrics

NAMESPACE = 'BeamML_Dynamo'


class HandlerMetrics:
  def __init__(self, namespace: str = NAMESPACE):
    self.requests = Metrics.counter(namespace, 'requests')
    self.request_retries = Metrics.counter(namespace, 'request_retries')
    self.request_failures = Metrics.counter(namespace, 'request_failures')
    self.prompt_tokens = Metrics.counter(namespace, 'prompt_tokens')
    self.completion_tokens = Metrics.counter(namespace, 'completion_tokens')
    self.request_latency_ms = Metrics.distribution(
        namespace, 'request_latency_ms')
    # A gauge, not a counter: every SDK process sees the same restarts.
    self.stack_restarts = Metrics.gauge(namespace, 'stack_restarts')
    self._stack_gauges = {
        name: Metrics.gauge(namespace, name)
        for name in stack_metrics.GAUGE_NAMES
    }
    self._stack_distributions = {
        name: Metrics.distribution(namespace, name)
        for name in stack_metrics.DISTRIBUTION_NAMES
    }
    self._last_sample: Optional[int] = None
    self._last_latency_sample: Optional[int] = None

  def record(self, stats: BatchStats, outcomes, restarts: int) -> None:
    self.requests.inc(stats.requests)
    if stats.retries:
      self.request_retries.inc(stats.retries)
    if stats.failures:
      self.request_failures.inc(stats.failures)
    for latency in stats.latencies_ms:
      self.request_latency_ms.update(latency)
    prompt = completion = 0
    for outcome in outcomes:
      usage = getattr(outcome, 'usage', None)
      if usage is not None:
        prompt += usage.prompt_tokens or 0
        completion += usage.completion_tokens or 0
    if prompt:
      self.prompt_tokens.inc(prompt)
    if completion:
      self.completion_tokens.inc(completion)
    self.stack_restarts.set(restarts)

  def record_stack(self, metrics: Mapping[str, int]) -> None:
    """Reports the stack's last metrics sample: gauges once per sample,
    distributions once per measurement."""
    sample = metrics.get('sample')
    if sample is None or sample == self._last_sample:
      return
    self._last_sample = sample
    for name, gauge in self._stack_gauges.items():
      if name in metrics:
        gauge.set(metrics[name])
    latency_sample = metrics.get('latency_sample')
    if latency_sample is None or latency_sample == self._last_latency_sample:
      return
    self._last_latency_sample = latency_sample
    for name, distribution in self._stack_distributions.items():
      if name in metrics:
        distribution.update(metrics[name])
