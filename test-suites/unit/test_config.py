"""Handler options are validated when the pipeline is built."""

import dataclasses
import json

import pytest

from apache_beam_dynamo import VLLMChatModelHandler, VLLMCompletionsModelHandler
from apache_beam_dynamo.serving import gpu
from apache_beam_dynamo.config.request import RequestConfig
from apache_beam_dynamo.config.server_args import normalize_server_kwargs
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ConfigError
from apache_beam_dynamo.serving.machine import Machine
from apache_beam_dynamo.serving.stacks import DynamoStack


def test_server_kwargs_are_normalized_to_dashed_flags():
  assert normalize_server_kwargs(
      {'max_num_seqs': 32, '--dtype': 'half', 'enforce-eager': None,
       'trust-remote-code': True, 'gpu_memory_utilization': 0.72},
      'vllm_server_kwargs') == (
          ('max-num-seqs', '32'), ('dtype', 'half'), ('enforce-eager', None),
          ('trust-remote-code', None), ('gpu-memory-utilization', '0.72'))


@pytest.mark.parametrize('kwargs, message', [
    ({'enforce-eager': False}, 'negative form'),
    ({'max-num-seqs': [1]}, 'string, a number or None'),
    ({'': 'x'}, 'non-empty'),
])
def test_bad_server_kwargs(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    normalize_server_kwargs(kwargs, 'vllm_server_kwargs')


def test_server_kwargs_must_be_a_dict():
  with pytest.raises(ConfigError, match='must be a dict'):
    VLLMCompletionsModelHandler('m', ['max-num-seqs'])


def test_mocker_requires_use_dynamo(tiny_model):
  with pytest.raises(ConfigError, match='needs use_dynamo=True'):
    VLLMCompletionsModelHandler(tiny_model, engine='mocker')


def test_unknown_engine():
  with pytest.raises(ConfigError, match="engine must be one of"):
    VLLMCompletionsModelHandler('m', use_dynamo=True, engine='sglang')


def test_mocker_model_dir_must_exist(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    VLLMCompletionsModelHandler(
        str(tmp_path / 'nope'), use_dynamo=True, engine='mocker')


def test_mocker_model_dir_needs_tokenizer(tmp_path):
  (tmp_path / 'config.json').write_text('{"architectures": ["X"]}')
  with pytest.raises(ConfigError, match='lacks tokenizer.json, tokenizer_config'):
    VLLMCompletionsModelHandler(str(tmp_path), use_dynamo=True, engine='mocker')


def test_mocker_model_config_needs_architectures(tmp_path, tiny_model):
  for name in ('tokenizer.json', 'tokenizer_config.json'):
    (tmp_path / name).write_text((open(f'{tiny_model}/{name}').read()))
  (tmp_path / 'config.json').write_text('{"model_type": "qwen3"}')
  with pytest.raises(ConfigError, match='architectures'):
    VLLMCompletionsModelHandler(str(tmp_path), use_dynamo=True, engine='mocker')


@pytest.mark.parametrize('use_dynamo, argument, kwargs', [
    (True, 'dynamo_frontend_kwargs', {'http-port': '8000'}),
    (True, 'dynamo_frontend_kwargs', {'http_host': '0.0.0.0'}),
    (True, 'dynamo_frontend_kwargs', {'namespace': 'x'}),
    (True, 'dynamo_frontend_kwargs', {'discovery-backend': 'file'}),
    (True, 'vllm_server_kwargs', {'request-plane': 'nats'}),
    (False, 'vllm_server_kwargs', {'port': '8000'}),
    (False, 'vllm_server_kwargs', {'host': '0.0.0.0'}),
])
def test_managed_flags_are_rejected(use_dynamo, argument, kwargs):
  flag = next(iter(kwargs)).replace('_', '-')
  with pytest.raises(ConfigError, match=f'sets --{flag}, which'):
    VLLMCompletionsModelHandler('m', use_dynamo=use_dynamo, **{argument: kwargs})


def test_managed_flag_with_our_value_is_accepted():
  # apache-beam 2.77 users often pass the stack's defaults explicitly.
  VLLMCompletionsModelHandler(
      'm', {'discovery-backend': 'etcd'},
      use_dynamo=True,
      dynamo_frontend_kwargs={'request-plane': 'tcp', 'router-mode': 'round-robin'})


def test_model_flag_is_managed_for_the_engine():
  with pytest.raises(ConfigError, match='--model'):
    VLLMCompletionsModelHandler('m', {'model': 'other'}, use_dynamo=True)


def test_frontend_kwargs_need_dynamo():
  with pytest.raises(ConfigError, match='only apply with use_dynamo=True'):
    VLLMCompletionsModelHandler('m', dynamo_frontend_kwargs={'router-mode': 'x'})


@pytest.mark.parametrize('option, value, message', [
    ('startup_timeout_s', 0, 'must be positive'),
    ('startup_timeout_s', 'soon', 'must be a number'),
    ('max_concurrent_requests', 0, 'positive integer'),
    ('max_concurrent_requests', 2.5, 'positive integer'),
    ('request_timeout_s', -1, 'must be positive'),
    ('max_request_retries', -1, '>= 0'),
    ('max_restarts', True, '>= 0'),
    ('keep_alive_s', -1, '>= 0'),
    ('failed_elements', 'ignore', 'failed_elements must be one of'),
    ('engine_env', ['A=1'], 'engine_env must be a dict'),
    ('engine_env', {'A': 1}, 'engine_env must map names to strings'),
    ('etcd_binary', '', 'etcd_binary must be a path'),
])
def test_bad_options(option, value, message):
  with pytest.raises(ConfigError, match=message):
    VLLMCompletionsModelHandler('m', use_dynamo=True, **{option: value})


def test_options_are_explicit_keyword_arguments():
  # Every option is a named keyword-only parameter (IDEs and type checkers
  # see them); a misspelt one fails as any Python call does.
  with pytest.raises(TypeError, match="unexpected keyword argument 'startup_timeout'"):
    VLLMCompletionsModelHandler('m', use_dynamo=True, startup_timeout=5)
  with pytest.raises(TypeError, match='positional'):
    VLLMCompletionsModelHandler('m', None, True)


def test_empty_model_name():
  with pytest.raises(ConfigError, match='model_name must be a non-empty'):
    VLLMCompletionsModelHandler('  ')


def test_missing_local_chat_template(tmp_path):
  with pytest.raises(ConfigError, match='not a readable file'):
    VLLMChatModelHandler('m', str(tmp_path / 'missing.jinja'), use_dynamo=True)


def test_unknown_filesystem_for_chat_template():
  with pytest.raises(ConfigError, match='no Beam filesystem'):
    VLLMChatModelHandler('m', 'nosuchfs://bucket/t.jinja', use_dynamo=True)


def test_served_model_name_comes_from_the_engine_flags(tiny_model):
  assert StackConfig('org/m').served_model_name == 'org/m'
  assert StackConfig(
      'org/m', engine_args=(('served-model-name', 'a b'), )).served_model_name == 'a'
  assert StackConfig(
      tiny_model, use_dynamo=True, engine='mocker',
      engine_args=(('model-name', 'tiny'), )).served_model_name == 'tiny'
  # A local model is served under its directory name, not its path.
  assert StackConfig(tiny_model).served_model_name == 'tiny_model'
  assert StackConfig('/models/llama/').served_model_name == 'llama'


def test_config_round_trips_through_json_and_fingerprints_by_content():
  config = StackConfig(
      'm', use_dynamo=True, engine_args=(('dtype', 'half'), ('x', None)),
      engine_env=(('A', '1'), ), chat_template='{{ messages }}')
  again = StackConfig.from_json(config.to_json())
  assert again == config
  assert again.fingerprint() == config.fingerprint()
  assert StackConfig('m', use_dynamo=True).fingerprint() != config.fingerprint()
  assert json.loads(config.to_json())['chat_template'] == '{{ messages }}'


def test_handlers_keep_apache_beams_positional_order():
  chat = VLLMChatModelHandler('m', None, {'max-num-seqs': '8'})
  assert chat.stack_config.engine_args == (('max-num-seqs', '8'), )
  completions = VLLMCompletionsModelHandler('m', {'max-num-seqs': '8'})
  assert completions.stack_config.engine_args == (('max-num-seqs', '8'), )


SIZING = {'target_batch_overhead': None, 'target_batch_duration_secs': 60,
          'variance': 0}


def test_batching_arguments_reach_beam():
  handler = VLLMCompletionsModelHandler(
      'm', min_batch_size=4, max_batch_size=64, max_batch_duration_secs=2)
  assert handler.batch_elements_kwargs() == {
      'min_batch_size': 4, 'max_batch_size': 64, 'max_batch_duration_secs': 2,
      **SIZING}


def test_batch_sizes_default_to_a_full_server_queue():
  assert VLLMCompletionsModelHandler('m').batch_elements_kwargs() == {
      'min_batch_size': 512, 'max_batch_size': 4096, **SIZING}
  # A smaller max than the default min lowers the min with it.
  assert VLLMCompletionsModelHandler(
      'm', max_batch_size=8).batch_elements_kwargs() == {
          'min_batch_size': 8, 'max_batch_size': 8, **SIZING}
  assert VLLMCompletionsModelHandler(
      'm', min_batch_size=5000).batch_elements_kwargs() == {
          'min_batch_size': 5000, 'max_batch_size': 5000, **SIZING}


def test_batches_double_in_whole_multiples_of_the_first():
  """Beam's own estimator, given the handler's options and batch times
  with a large fixed part (an engine's last, partial wave), still doubles
  from the first size to the largest, without jitter."""
  from apache_beam.transforms.util import _BatchSizeEstimator
  kwargs = VLLMCompletionsModelHandler('m').batch_elements_kwargs()
  clock = [0.0]
  estimator = _BatchSizeEstimator(clock=lambda: clock[0], **kwargs)
  sizes = []
  for _ in range(16):
    size = estimator.next_batch_size()
    sizes.append(size)
    with estimator.record_time(size):
      clock[0] += 0.25 + 0.0036 * size  # an H200's batches (docs/gpu.md)
  assert sizes == [512, 1024, 2048] + [4096] * 13


def test_requests_in_flight_default_to_512_per_engine():
  assert RequestConfig().concurrency(engines=1) == 512
  assert RequestConfig().concurrency(engines=2) == 1024
  assert RequestConfig(max_concurrent_requests=64).concurrency(engines=2) == 64


def test_requests_in_flight_follow_a_known_max_num_seqs():
  # A T4's engine runs 32 sequences: 4 x 32 queued, not 512 that time out.
  assert RequestConfig().concurrency(engines=1, max_num_seqs=32) == 128
  assert RequestConfig().concurrency(engines=2, max_num_seqs=32) == 256
  # An H200's runs 512: a second 512 wait in its queue.
  assert RequestConfig().concurrency(engines=1, max_num_seqs=512) == 1024
  assert RequestConfig().concurrency(engines=1, max_num_seqs=1024) == 1024
  assert RequestConfig(max_concurrent_requests=8).concurrency(
      engines=1, max_num_seqs=32) == 8


def test_stack_reports_the_max_num_seqs_its_engines_get():
  def stack(engine_args=(), gpu_defaults=()):
    built = DynamoStack(StackConfig('m', use_dynamo=True, engine_args=engine_args),
                        on_line=lambda *_: None, parent_env={})
    # what the machine check finds on a worker
    built.machine = Machine(engine_gpus=((0, ), ), gpu_defaults=gpu_defaults)
    return built

  t4 = gpu.engine_defaults(gpu.GpuInfo('Tesla T4', 7.5, 15360))
  h200 = gpu.engine_defaults(gpu.GpuInfo('NVIDIA H200', 9.0, 143771))
  assert stack().max_num_seqs is None
  assert stack(gpu_defaults=t4).max_num_seqs == 32
  assert stack(gpu_defaults=h200).max_num_seqs == 512
  assert stack((('max-num-seqs', '64'), ), gpu_defaults=t4).max_num_seqs == 64


@pytest.mark.parametrize('options, message', [
    (dict(gpus=[0, 1, 1]), 'more than once'),
    (dict(gpus=[0, 1, 2], tensor_parallel_size=2), 'does not divide'),
    (dict(gpus=[0, 1], num_engines=3), 'only 2 are available'),
    (dict(gpus=[0, 1, 2, 3], tensor_parallel_size=2, num_engines=3),
     'needs 6 GPU'),
    (dict(gpus=[]), 'non-empty list'),
    (dict(gpus=[-1]), 'non-empty list'),
    (dict(tensor_parallel_size=0), 'positive integer'),
    (dict(num_engines=0), 'positive integer'),
    (dict(router_mode='least-loaded'), 'router_mode must be one of'),
    (dict(dynamo_frontend_kwargs={'router-mode': 'kv'}), 'router_mode='),
    (dict(vllm_server_kwargs={'tensor-parallel-size': '2'}),
     'tensor-parallel-size'),
])
def test_topology_is_validated_when_built(options, message):
  with pytest.raises(ConfigError, match=message):
    VLLMCompletionsModelHandler('m', use_dynamo=True, **options)


def test_topologies_that_are_fine():
  VLLMCompletionsModelHandler('m', use_dynamo=True, gpus=[0, 1])
  VLLMCompletionsModelHandler(
      'm', use_dynamo=True, gpus=[2, 3, 4, 5], tensor_parallel_size=2,
      num_engines=1, router_mode='kv')
  VLLMCompletionsModelHandler('m', tensor_parallel_size=2)  # native vLLM
  handler = VLLMCompletionsModelHandler(
      'm', use_dynamo=True, dynamo_frontend_kwargs={'router-mode': 'random'},
      router_mode='random')
  assert handler.stack_config.router_mode == 'random'


def test_mocker_takes_num_engines_and_declared_gpus_but_not_tp(tiny_model):
  VLLMCompletionsModelHandler(
      tiny_model, use_dynamo=True, engine='mocker', num_engines=3)
  # gpus on the mocker declare GPUs for the ledger (it still runs on CPU),
  # whatever the number of engines.
  handler = VLLMCompletionsModelHandler(
      tiny_model, use_dynamo=True, engine='mocker', gpus=[0], num_engines=2)
  assert handler.stack_config.gpus == (0, )
  with pytest.raises(ConfigError, match='mocker runs on the CPU'):
    VLLMCompletionsModelHandler(
        tiny_model, use_dynamo=True, engine='mocker', tensor_parallel_size=2)


_POLICY_VARIANTS = [
    dict(startup_timeout_s=30), dict(max_restarts=0), dict(keep_alive_s=9),
    dict(liveness_interval_s=0.5), dict(restart_window_s=5),
    dict(shutdown_grace_s=2), dict(request_timeout_s=5),
    dict(max_request_retries=1), dict(failed_elements='return'),
]


@pytest.mark.parametrize('variant', _POLICY_VARIANTS, ids=lambda v: list(v)[0])
def test_policies_never_split_a_stack(tiny_model, variant):
  base = VLLMCompletionsModelHandler(tiny_model, use_dynamo=True)
  other = VLLMCompletionsModelHandler(tiny_model, use_dynamo=True, **variant)
  assert (other.stack_config.fingerprint() ==
          base.stack_config.fingerprint())


def test_completions_and_chat_without_template_share_a_stack(tiny_model):
  completions = VLLMCompletionsModelHandler(tiny_model, use_dynamo=True)
  chat = VLLMChatModelHandler(tiny_model, None, use_dynamo=True)
  assert (chat._worker_config().fingerprint() ==
          completions._worker_config().fingerprint())
  # Two chat handlers with the same template text share too.
  with_template = StackConfig(tiny_model, use_dynamo=True, chat_template='{{x}}')
  assert with_template.fingerprint() == dataclasses.replace(
      with_template, startup_timeout_s=1).fingerprint()
  assert with_template.fingerprint() != completions.stack_config.fingerprint()


@pytest.mark.parametrize('change', [
    dict(model='other'), dict(engine_args=(('dtype', 'half'), )),
    dict(frontend_args=(('x', None), )), dict(chat_template='{{x}}'),
    dict(gpus=(0, )), dict(num_engines=2), dict(router_mode='kv'),
    dict(adapt_to_gpu=False), dict(etcd_binary='/bin/etcd'),
    dict(engine_env=(('A', '1'), )), dict(use_dynamo=False),
], ids=lambda c: list(c)[0])
def test_what_runs_is_the_identity(change):
  base = StackConfig('m', use_dynamo=True)
  assert dataclasses.replace(base, **change).fingerprint() != base.fingerprint()


def test_policy_lists_the_supervision_fields():
  config = StackConfig('m', startup_timeout_s=7, keep_alive_s=3)
  assert config.policy() == {
      'startup_timeout_s': 7, 'liveness_interval_s': 1.0, 'max_restarts': 3,
      'restart_window_s': 600.0, 'shutdown_grace_s': 10.0}
  assert 'keep_alive_s' not in config.identity()


def test_several_engines_and_routers_need_dynamo():
  with pytest.raises(ConfigError, match='num_engines > 1 needs use_dynamo'):
    VLLMCompletionsModelHandler('m', num_engines=2)
  with pytest.raises(ConfigError, match='router_mode applies to the Dynamo'):
    VLLMCompletionsModelHandler('m', router_mode='kv')
