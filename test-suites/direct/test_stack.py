"""The embedded stack on the CPU lane: real etcd, dynamo.frontend and
dynamo.mocker, started and stopped through the handler's Lease."""

import json
import os
import socket
import stat
import urllib.request

import psutil
import pytest

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import StackStartupError
from apache_beam_dynamo.runtime.registry import registry

from conftest import (
    FAST_MOCKER, Holder, mocker_config, run_dirs, run_python, serving_pids,
    stack_pids)


def get_json(url):
  with urllib.request.urlopen(url, timeout=5) as response:
    return json.loads(response.read())


def complete(base_url, model, prompt='hello', max_tokens=4):
  body = json.dumps({
      'model': model, 'prompt': prompt, 'max_tokens': max_tokens
  }).encode()
  request = urllib.request.Request(
      base_url + '/v1/completions', body,
      {'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=10) as response:
    return json.loads(response.read())


def listening_sockets(pids):
  found = []
  for pid in pids:
    try:
      connections = psutil.Process(pid).net_connections(kind='inet')
    except psutil.Error:
      continue
    for conn in connections:
      if conn.status == psutil.CONN_LISTEN:
        found.append((pid, conn.laddr.ip, conn.laddr.port))
  return found


def test_stack_serves_on_loopback_and_leaves_nothing(tiny_model, no_leftovers):
  holder = Holder()
  stack = registry.acquire(mocker_config(tiny_model), holder)
  state = stack.wait_ready(60)
  assert state.phase == 'ready' and state.generation == 1
  assert state.base_url.startswith('http://127.0.0.1:')
  reply = complete(state.base_url, state.model, max_tokens=5)
  assert reply['usage']['completion_tokens'] == 5
  assert reply['choices'][0]['finish_reason'] == 'length'

  # Every socket the stack controls listens on loopback. Dynamo 1.4's ZMQ
  # event publishers (engine) bind 0.0.0.0 with no setting to change it;
  # the README documents them.
  sockets = listening_sockets(stack_pids(''))
  assert sockets
  engine_pids = set(stack_pids('dynamo.mocker'))
  assert engine_pids == {state.pids['engine']}
  for pid, ip, port in sockets:
    if ip in ('127.0.0.1', '::1'):
      continue
    assert ip == '0.0.0.0' and pid in engine_pids, (pid, ip, port)

  run_dir, = run_dirs()
  assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
  del holder  # the last user is gone: the stack stops


def test_two_configs_get_two_isolated_stacks(tiny_model, no_leftovers):
  holder = Holder()
  first = registry.acquire(mocker_config(tiny_model), holder)
  second = registry.acquire(
      mocker_config(
          tiny_model,
          engine_args=tuple(FAST_MOCKER.items()) + (('model-name', 'other'), )),
      holder)
  a, b = first.wait_ready(60), second.wait_ready(60)
  assert a.base_url != b.base_url
  # Separate etcd and namespaces: neither frontend sees the other's model.
  assert [m['id'] for m in get_json(a.base_url + '/v1/models')['data']] == [a.model]
  assert [m['id'] for m in get_json(b.base_url + '/v1/models')['data']] == ['other']
  del holder


def test_one_config_in_two_processes_shares_one_stack(tiny_model, no_leftovers):
  holder = Holder()
  config = mocker_config(tiny_model)
  state = registry.acquire(config, holder).wait_ready(60)
  code = f'''
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.runtime.registry import registry
class H: pass
h = H()
print(registry.acquire(StackConfig.from_json({config.to_json()!r}), h).wait_ready(60).base_url)
'''
  other = run_python(code)
  assert other.returncode == 0, other.stderr
  assert other.stdout.strip() == state.base_url
  assert len(stack_pids('dynamo.frontend')) == 1
  # The other process exited; this one still holds its lease.
  assert complete(state.base_url, state.model)['usage']['completion_tokens'] == 4
  del holder


def test_startup_failure_names_the_component_exit_code_and_log(
    tiny_model, no_leftovers):
  holder = Holder()
  config = mocker_config(
      tiny_model, engine_args=(('no-such-flag', '1'), ))
  stack = registry.acquire(config, holder)
  with pytest.raises(StackStartupError) as error:
    stack.wait_ready(60)
  message = str(error.value)
  assert 'engine: exited during startup (exit code 2)' in message
  assert 'no-such-flag' in message  # from the engine's own log tail
  del holder, stack


def test_model_from_the_hub_cache_becomes_ready_offline(
    tiny_model, tmp_path, monkeypatch, no_leftovers):
  # A hub id, resolved from the local Hugging Face cache with no network:
  # the worker serves its own model card, so the frontend never asks the hub.
  snapshot = tmp_path / 'hub' / 'models--acme--tiny' / 'snapshots' / 'abc123'
  snapshot.mkdir(parents=True)
  for name in os.listdir(tiny_model):
    (snapshot / name).write_bytes(open(os.path.join(tiny_model, name), 'rb').read())
  (tmp_path / 'hub' / 'models--acme--tiny' / 'refs').mkdir()
  (tmp_path / 'hub' / 'models--acme--tiny' / 'refs' / 'main').write_text('abc123')
  monkeypatch.setenv('HF_HOME', str(tmp_path))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  holder = Holder()
  state = registry.acquire(mocker_config('acme/tiny'), holder).wait_ready(60)
  assert state.model == 'acme/tiny'
  assert complete(state.base_url, 'acme/tiny')['usage']['completion_tokens'] == 4
  del holder


def test_etcd_endpoints_pointing_at_nothing(tiny_model, monkeypatch, no_leftovers):
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    dead_port = probe.getsockname()[1]
  monkeypatch.setenv('ETCD_ENDPOINTS', f'http://127.0.0.1:{dead_port}')
  holder = Holder()
  # Found by the machine check, before any process of the stack starts.
  with pytest.raises(StackStartupError, match='does not answer /health'):
    registry.acquire(mocker_config(tiny_model), holder).wait_ready(60)
  assert not serving_pids()
  del holder


def test_vllm_engine_on_a_machine_without_it_fails_at_once(no_leftovers):
  holder = Holder()
  # Found by the machine check, before any process of the stack starts,
  # so the 20-minute startup timeout never comes into play.
  with pytest.raises(StackStartupError, match='engine: .*(vLLM|GPU)'):
    registry.acquire(
        StackConfig('Qwen/Qwen3-0.6B', use_dynamo=True), holder).wait_ready()
  assert not serving_pids()
  del holder
