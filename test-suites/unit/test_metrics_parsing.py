"""The summary of the stack's Prometheus pages (lines as ai-dynamo 1.4.2's
frontend and mocker serve them)."""

from apache_beam_dynamo.serving import stack_metrics
from apache_beam_dynamo.serving.stack_metrics import Sampler

FRONTEND = '''
# HELP dynamo_frontend_inflight_requests Number of inflight requests
# TYPE dynamo_frontend_inflight_requests gauge
dynamo_frontend_inflight_requests{model="tiny_model"} 64
dynamo_frontend_queued_requests{model="tiny_model"} 54
dynamo_frontend_time_to_first_token_seconds_bucket{model="tiny_model",le="0.01"} 3
dynamo_frontend_time_to_first_token_seconds_sum{model="tiny_model"} %(ttft_sum)s
dynamo_frontend_time_to_first_token_seconds_count{model="tiny_model"} %(ttft_count)s
dynamo_frontend_inter_token_latency_seconds_sum{model="tiny_model"} 14.0304
dynamo_frontend_inter_token_latency_seconds_count{model="tiny_model"} 1900
dynamo_frontend_cached_tokens_sum{model="tiny_model"} 25
dynamo_frontend_cached_tokens_count{model="tiny_model"} 4
dynamo_frontend_input_sequence_tokens_sum{model="tiny_model"} 100
'''
ENGINE = '''
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny_model"} %(running)s
vllm:num_requests_waiting{engine="0",model_name="tiny_model"} 2
vllm:kv_cache_usage_perc{engine="0",model_name="tiny_model"} %(kv)s
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny_model"} 3.49
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny_model"} 75
vllm:num_preemptions_total{engine="0",model_name="tiny_model"} NaN
'''


def pages(ttft_sum=4.5, ttft_count=100, engines=((10, 0.25),)):
  frontend = FRONTEND % {'ttft_sum': ttft_sum, 'ttft_count': ttft_count}
  return [stack_metrics.parse(frontend)] + [
      stack_metrics.parse(ENGINE % {'running': r, 'kv': kv})
      for r, kv in engines]


def summarize(sampler, series):
  sampler.samples += 1
  return sampler.summarize(stack_metrics._merge(series))


def test_a_summary_of_the_frontend_and_two_engines():
  summary = summarize(Sampler(list), pages(engines=((10, 0.25), (4, 0.5))))
  assert summary == {
      'sample': 1,
      'frontend_inflight_requests': 64,
      'frontend_queued_requests': 54,
      'engine_requests_running': 14,
      'engine_requests_waiting': 4,
      'kv_cache_usage_pct': 50,
      'prefix_cache_hit_pct': 25,
      'time_to_first_token_micros': 45000,  # the frontend's, not the engines'
      'inter_token_latency_micros': 7384,
      'latency_sample': 1,
  }


def test_latencies_are_means_since_the_sample_that_measured_them():
  sampler = Sampler(list)
  assert summarize(sampler, pages(4.5, 100))['time_to_first_token_micros'] == (
      45000)
  after = summarize(sampler, pages(5.5, 110))  # 10 more requests, 1 s in all
  assert after['time_to_first_token_micros'] == 100000
  assert after['latency_sample'] == 2
  idle = summarize(sampler, pages(5.5, 110))  # nothing finished: kept as is
  assert idle['time_to_first_token_micros'] == 100000
  assert (idle['sample'], idle['latency_sample']) == (3, 2)
  restarted = summarize(sampler, pages(0.2, 2))  # counters from zero again
  assert restarted['time_to_first_token_micros'] == 100000
  assert restarted['latency_sample'] == 4


def test_no_page_no_summary():
  sampler = Sampler(lambda: ['http://127.0.0.1:1'])
  assert sampler.sample() is None
  assert sampler.samples == 0


# ai-dynamo 1.4.2's frontend with two mocker engines and router_mode="kv":
# the mocker reports no cached tokens (count 0), the KV router its overlap.
KV_FRONTEND = '''
dynamo_frontend_cached_tokens_sum{model="tiny_model"} 0
dynamo_frontend_cached_tokens_count{model="tiny_model"} 0
dynamo_frontend_input_sequence_tokens_sum{model="tiny_model"} 207840
dynamo_component_router_kv_hit_rate_sum{dynamo_component="backend",dynamo_namespace="abd_6289c5c45605",router_id="6720393405078727944",worker_id="5d43a2321c986d08"} 119.9999999999996
dynamo_component_router_kv_hit_rate_count{dynamo_component="backend",dynamo_namespace="abd_6289c5c45605",router_id="6720393405078727944",worker_id="5d43a2321c986d08"} 201
'''


def test_no_prefix_hit_rate_made_up_from_cached_tokens_never_reported():
  summary = summarize(Sampler(list), [stack_metrics.parse(KV_FRONTEND)])
  assert 'prefix_cache_hit_pct' not in summary
  assert summary['router_kv_hit_pct'] == 60  # 120 / 201 requests


def test_no_router_hit_rate_without_the_kv_router():
  summary = summarize(Sampler(list), pages())
  assert 'router_kv_hit_pct' not in summary
