"""The stack's own metrics (sampled by the supervisor from the frontend's
and the engine's Prometheus pages) in a real pipeline's Beam metrics."""

from importlib.metadata import version

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from conftest import StackWatch, run_pipeline

LATENCIES = ('time_to_first_token_micros', 'inter_token_latency_micros')
# prefix_cache_hit_pct only where the engine reports cached tokens: the
# mocker of ai-dynamo 1.4.2 reports none (so no made-up 0), 1.6.1's does.
MOCKER_REPORTS_CACHED_TOKENS = not version('ai-dynamo').startswith('1.4.')
GAUGES = ('frontend_inflight_requests', 'frontend_queued_requests',
          'engine_requests_running', 'engine_requests_waiting',
          'kv_cache_usage_pct')


def assert_prefix_cache_hit_rate(gauges):
  if MOCKER_REPORTS_CACHED_TOKENS:
    assert 0 <= gauges['prefix_cache_hit_pct'] <= 100, gauges
  else:
    assert 'prefix_cache_hit_pct' not in gauges, gauges


def _infer(handler, prompts, max_tokens, prefix=''):
  def pipeline(p):
    tokens = (
        p | beam.Create([f'{prefix}p{i}' for i in range(prompts)])
        | RunInference(handler, inference_args={'max_tokens': max_tokens})
        | beam.Map(lambda r: r.inference.usage.completion_tokens))
    assert_that(tokens, equal_to([max_tokens] * prompts))

  return run_pipeline(pipeline)


def test_stack_metrics_reach_beam_metrics(completions_handler, no_leftovers):
  # Simulated engine timing (speedup 1: milliseconds per token), and a
  # sample every 5 x 0.2 s.
  handler = completions_handler(
      vllm_server_kwargs={'speedup-ratio': '1'}, liveness_interval_s=0.2)
  watch = StackWatch(handler)  # keeps the stack up between the pipelines
  _infer(handler, 100, 8)
  # The supervisor's sample after those requests finished.
  state = watch.wait_for(
      lambda s: all(name in s.metrics for name in LATENCIES + GAUGES))
  # A second pipeline reports the stack's latest sample.
  result = _infer(handler, 10, 2)
  watch.close()

  query = result.metrics().query(
      MetricsFilter().with_namespace('BeamML_Dynamo'))
  distributions = {d.key.metric.name: d.committed
                   for d in query['distributions']}
  gauges = {g.key.metric.name: g.committed.value for g in query['gauges']}
  # The mocker simulates ~tens of ms to the first token, a few per token.
  ttft = distributions['time_to_first_token_micros']
  assert ttft.count >= 1 and 1_000 <= ttft.min <= ttft.max <= 10_000_000
  itl = distributions['inter_token_latency_micros']
  assert itl.count >= 1 and 100 <= itl.min <= itl.max <= 1_000_000
  for name in GAUGES:
    assert name in gauges, (name, gauges)
  assert 0 <= gauges['kv_cache_usage_pct'] <= 100
  assert_prefix_cache_hit_rate(gauges)
  assert 'router_kv_hit_pct' not in gauges  # round-robin: no KV router
  assert gauges['frontend_inflight_requests'] >= 0
  assert state.metrics['sample'] >= 1


def test_kv_router_hit_rate_with_a_shared_prefix(completions_handler,
                                                 no_leftovers):
  # Two engines behind the KV router; every prompt starts with the same
  # 640 tokens (10 blocks of 64: the tiny tokenizer is byte-level).
  handler = completions_handler(
      vllm_server_kwargs={'speedup-ratio': '1'}, num_engines=2,
      router_mode='kv', liveness_interval_s=0.2)
  watch = StackWatch(handler)
  prefix = 'shared context ' * 43  # 645 characters
  try:
    # The first pipeline fills the engines' caches; the second's requests
    # find their prefix where the router sends them.
    _infer(handler, 40, 2, prefix)
    result = _infer(handler, 40, 2, prefix)
    state = watch.wait_for(
        lambda s: s.metrics.get('router_kv_hit_pct', 0) >= 20)
  finally:
    watch.close()

  gauges = {g.key.metric.name: g.committed.value for g in result.metrics().query(
      MetricsFilter().with_namespace('BeamML_Dynamo'))['gauges']}
  assert state.metrics['router_kv_hit_pct'] <= 100, state.metrics
  assert 'router_kv_hit_pct' in gauges, gauges  # reported as a Beam gauge
  assert_prefix_cache_hit_rate(gauges)
