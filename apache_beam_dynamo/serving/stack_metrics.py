"""A small summary of the stack's own Prometheus metrics.

The supervisor samples the frontend's ``/metrics`` (Dynamo's
``dynamo_frontend_*``, or vLLM's server's ``vllm:*`` without Dynamo) and
each engine's (``vllm:*`` on its system port, ``DYN_SYSTEM_PORT``) every few
liveness intervals, and publishes the summary in its state; the handlers
report it as Beam metrics (beam/metrics.py). Values are integers, as Beam's
gauges and distributions hold:

gauges (the value at the last sample, summed over engines unless noted)
  ``frontend_inflight_requests``, ``frontend_queued_requests``: requests
  in the frontend, and those not yet handed to an engine;
  ``engine_requests_running``, ``engine_requests_waiting``: requests the
  engines schedule, and those waiting for a slot (their queue);
  ``kv_cache_usage_pct``: the fullest engine's KV-cache usage, in percent;
  ``prefix_cache_hit_pct``: prefix-cache hits over queries (vLLM) or cached
  over prompt tokens (Dynamo's frontend, when the engine reports cached
  tokens: the mocker does not, so it has no such gauge), since the stack
  started;
  ``router_kv_hit_pct``: with ``router_mode="kv"``, the mean share of a
  request's KV blocks that the engine the router chose already held (as
  the engines' KV events told it), since the stack started.
distributions (one value per sample that saw requests finish: their mean)
  ``time_to_first_token_micros``, ``inter_token_latency_micros``: as the
  frontend measured them (else the engines). A summary keeps the last
  measured means, with ``latency_sample``, the sample that measured them,
  so a reader can tell a new measurement from one it already reported.

Stdlib only: this runs in the supervisor.
"""

import math
import re
from typing import Callable, Iterable, Optional

from apache_beam_dynamo.serving import probes

SAMPLE_TIMEOUT_S = 1.0

# name{labels} value  (comments, timestamps and exemplars are ignored)
_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)', re.M)

# Our name -> the Prometheus series summed into it, first family found wins.
_GAUGES = {
    'frontend_inflight_requests': ('dynamo_frontend_inflight_requests', ),
    'frontend_queued_requests': ('dynamo_frontend_queued_requests', ),
    'engine_requests_running': ('vllm:num_requests_running', ),
    'engine_requests_waiting': ('vllm:num_requests_waiting', ),
}
# Our name -> the histograms it is the mean of (seconds), in preference order.
_LATENCIES = {
    'time_to_first_token_micros': ('dynamo_frontend_time_to_first_token_seconds',
                                   'vllm:time_to_first_token_seconds'),
    'inter_token_latency_micros': ('dynamo_frontend_inter_token_latency_seconds',
                                   'vllm:inter_token_latency_seconds'),
}
_KV_USAGE = ('vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc')
# (hits, queries) counter pairs, in preference order.
_PREFIX_HITS = (
    ('vllm:prefix_cache_hits_total', 'vllm:prefix_cache_queries_total'),
    ('vllm:gpu_prefix_cache_hits_total', 'vllm:gpu_prefix_cache_queries_total'),
    ('dynamo_frontend_cached_tokens_sum',
     'dynamo_frontend_input_sequence_tokens_sum'),
)
# Observations behind the frontend's cached tokens: none when the engine
# never reports cached tokens (the mocker), and then 0 would be made up.
_CACHED_TOKENS_COUNT = 'dynamo_frontend_cached_tokens_count'
# The KV router's per-request overlap (a fraction), a histogram.
_ROUTER_HITS = 'dynamo_component_router_kv_hit_rate'

GAUGE_NAMES = (*_GAUGES, 'kv_cache_usage_pct', 'prefix_cache_hit_pct',
               'router_kv_hit_pct')
DISTRIBUTION_NAMES = tuple(_LATENCIES)

Series = dict[str, list[float]]


def parse(text: str) -> Series:
  """Prometheus text format: every value of every series, by metric name."""
  series: Series = {}
  for name, value in _SAMPLE_RE.findall(text):
    try:
      number = float(value)
    except ValueError:
      continue
    if not math.isnan(number):
      series.setdefault(name, []).append(number)
  return series


def _merge(pages: Iterable[Series]) -> Series:
  merged: Series = {}
  for page in pages:
    for name, values in page.items():
      merged.setdefault(name, []).extend(values)
  return merged


def _total(series: Series, name: str) -> Optional[float]:
  values = series.get(name)
  return sum(values) if values else None


class Sampler:
  """Fetches the stack's metrics pages and summarizes them.

  Keeps the previous histogram totals, so each sample's latencies are the
  means over the requests finished since the one before (a restarted
  component's counters start again from zero: that sample then counts from
  zero too).
  """
  def __init__(self, urls: Callable[[], list[str]]):
    self._urls = urls
    self._previous: dict[str, tuple[float, float]] = {}
    self._latencies: dict[str, int] = {}
    self._latency_sample: Optional[int] = None
    self.samples = 0

  def sample(self) -> Optional[dict[str, int]]:
    """The summary (None when no page answered); increments ``samples``."""
    pages = []
    for url in self._urls():
      text = probes.get_text(url, '/metrics', SAMPLE_TIMEOUT_S)
      if text is not None:
        pages.append(parse(text))
    if not pages:
      return None
    self.samples += 1
    return self.summarize(_merge(pages))

  def summarize(self, series: Series) -> dict[str, int]:
    summary = {'sample': self.samples}
    for ours, names in _GAUGES.items():
      value = next((v for v in map(series.get, names) if v), None)
      if value is not None:
        summary[ours] = round(sum(value))
    usage = next((v for v in map(series.get, _KV_USAGE) if v), None)
    if usage is not None:
      summary['kv_cache_usage_pct'] = round(100 * max(usage))
    for hits_name, queries_name in _PREFIX_HITS:
      hits, queries = _total(series, hits_name), _total(series, queries_name)
      if hits_name.startswith('dynamo_frontend') and not _total(
          series, _CACHED_TOKENS_COUNT):
        continue
      if hits is not None and queries:
        summary['prefix_cache_hit_pct'] = round(100 * hits / queries)
        break
    routed = _total(series, f'{_ROUTER_HITS}_count')
    if routed:
      summary['router_kv_hit_pct'] = round(
          100 * _total(series, f'{_ROUTER_HITS}_sum') / routed)
    for ours, families in _LATENCIES.items():
      mean = self._interval_mean(series, families)
      if mean is not None:
        self._latencies[ours] = round(mean * 1e6)
        self._latency_sample = self.samples
    if self._latency_sample is not None:
      summary.update(self._latencies, latency_sample=self._latency_sample)
    return summary

  def _interval_mean(self, series: Series, families) -> Optional[float]:
    for family in families:
      total = _total(series, f'{family}_sum')
      count = _total(series, f'{family}_count')
      if total is None or count is None:
        continue
      before_total, before_count = self._previous.get(family, (0.0, 0.0))
      self._previous[family] = (total, count)
      if count < before_count:  # restarted: counting from zero again
        before_total, before_count = 0.0, 0.0
      if count > before_count:
        return (total - before_total) / (count - before_count)
      return None
    return None
