"""Many handlers on one worker (real mocker stacks): handlers that differ
only in policy share one engine; stacks of different models declaring one
GPU run side by side when their memory shares fit, and fail at once, naming
the stack already there, when they do not."""

import logging
import os
import signal

import apache_beam as beam
import psutil
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import (
    TINY_MODEL_DIR, OpenAIChatMessage, VLLMCompletionsModelHandler)
from apache_beam_dynamo.errors import StackStartupError
from apache_beam_dynamo.runtime.registry import registry
from apache_beam_dynamo.serving.ledger import Ledger

from conftest import (
    FAST_MOCKER, Holder, ProcessWatch, mocker_config, model_copies,
    run_pipeline, stack_pids, wait_for_no_leftovers, wait_until)


def test_seven_handlers_of_one_model_run_one_engine(
    completions_handler, chat_handler, caplog, no_leftovers):
  caplog.set_level(logging.WARNING, logger='apache_beam_dynamo.runtime.lease')
  completions = [
      completions_handler(),
      completions_handler(startup_timeout_s=90),
      completions_handler(max_restarts=1),
      completions_handler(keep_alive_s=0.1),
      completions_handler(liveness_interval_s=0.5),
      completions_handler(request_timeout_s=60),
  ]
  chat = chat_handler()  # no template: the model's own, as for completions

  def pipeline(p):
    for i, handler in enumerate(completions):
      kinds = (
          p | f'Prompts{i}' >> beam.Create([f'p{i}-{j}' for j in range(20)])
          | f'Complete{i}' >> RunInference(
              handler, inference_args={'max_tokens': 2})
          | f'Kind{i}' >> beam.Map(lambda r: r.inference.object))
      assert_that(kinds, equal_to(['text_completion'] * 20), label=f'C{i}')
    chats = (
        p | 'Chats' >> beam.Create(
            [[OpenAIChatMessage('user', f'q{j}')] for j in range(20)])
        | 'Chat' >> RunInference(chat, inference_args={'max_tokens': 2})
        | 'ChatKind' >> beam.Map(lambda r: r.inference.object))
    assert_that(chats, equal_to(['chat.completion'] * 20), label='Ch')

  with ProcessWatch('dynamo.mocker') as engines, ProcessWatch(
      'dynamo.frontend') as frontends:
    run_pipeline(pipeline)
  assert engines.most == 1 and frontends.most == 1
  # Whichever handler started the stack, the others' supervision settings
  # that it does not use are named, with the value in force.
  warnings = '\n'.join(
      r.getMessage() for r in caplog.records if r.levelname == 'WARNING')
  for field in ('startup_timeout_s', 'max_restarts', 'liveness_interval_s'):
    assert f'{field}=' in warnings, (field, warnings)
  assert 'request_timeout_s' not in warnings  # per handler, never a conflict


def model_handler(model, **engine_flags):
  return VLLMCompletionsModelHandler(
      model, {**FAST_MOCKER, **engine_flags}, use_dynamo=True,
      engine='mocker', keep_alive_s=0, gpus=[0])


def two_model_pipeline(handlers):
  def pipeline(p):
    for i, handler in enumerate(handlers):
      tokens = (
          p | f'Prompts{i}' >> beam.Create([f'p{j}' for j in range(20)])
          | f'Complete{i}' >> RunInference(
              handler, inference_args={'max_tokens': 3})
          | f'Tokens{i}' >> beam.Map(
              lambda r: (r.model_id, r.inference.usage.completion_tokens)))
      name = handler.stack_config.served_model_name
      assert_that(tokens, equal_to([(name, 3)] * 20), label=f'T{i}')

  return pipeline


def test_two_models_whose_shares_fit_share_a_gpu(tmp_path, no_leftovers):
  handlers = [
      model_handler(model, **{'gpu-memory-utilization': '0.4'})
      for model in model_copies(TINY_MODEL_DIR, tmp_path)
  ]
  with ProcessWatch('dynamo.mocker') as engines:
    run_pipeline(two_model_pipeline(handlers))
  assert engines.most == 2
  assert not wait_for_no_leftovers()
  assert Ledger().entries() == {}  # both stacks released their GPU


def test_two_models_with_default_shares_fail_fast_naming_the_other(
    tmp_path, no_leftovers):
  handlers = [model_handler(model) for model in model_copies(TINY_MODEL_DIR, tmp_path)]
  with ProcessWatch('dynamo.mocker') as engines:
    with pytest.raises(Exception) as failure:
      run_pipeline(two_model_pipeline(handlers))
  message = str(failure.value)
  assert 'no room on GPU 0' in message, message
  assert 'gpu-memory-utilization 0.92' in message
  assert "'gpu-memory-utilization' in vllm_server_kwargs" in message
  assert 'gpus=' in message
  assert engines.most == 1  # the second stack launched nothing


def test_the_ledger_error_surfaces_as_a_startup_error(tmp_path, no_leftovers):
  first_model, second_model = model_copies(TINY_MODEL_DIR, tmp_path)
  holder = Holder()
  first = registry.acquire(mocker_config(first_model, gpus=(0, )), holder)
  state = first.wait_ready(60)
  second = registry.acquire(mocker_config(second_model, gpus=(0, )), holder)
  with pytest.raises(StackStartupError) as failure:
    second.wait_ready(60)
  message = str(failure.value)
  assert "the stack for 'model-a' (GPUs [0], gpu-memory-utilization 0.92, " \
      f"supervisor pid {state.supervisor_pid})" in message, message
  assert "no room on GPU 0 for the stack for 'model-b'" in message
  assert len(stack_pids('dynamo.mocker')) == 1
  entry, = Ledger().entries().values()
  assert (entry.model, entry.gpus, entry.pid) == (
      'model-a', (0, ), state.supervisor_pid)
  del holder, first, second


def slow_to_stop_etcd(tmp_path) -> str:
  """etcd in a wrapper that ignores SIGTERM and lingers after etcd exits:
  its stack takes the whole shutdown_grace_s to stop (then SIGKILL)."""
  from apache_beam_dynamo.serving.machine import resolve_etcd
  script = tmp_path / 'slow-etcd'
  script.write_text(
      "#!/bin/sh\ntrap '' TERM\n"
      f'{resolve_etcd(None)} "$@" &\nwait $!\nexec sleep 600\n')
  script.chmod(0o755)
  return str(script)


@pytest.mark.parametrize('same_config, share', [
    (True, None), (False, None), (False, '0.4')],
                         ids=['same-config', 'other-model', 'other-model-fits'])
def test_a_newcomer_waits_for_a_stopping_stack_to_free_the_gpu(
    tmp_path, same_config, share, no_leftovers):
  """While a stack stops it still holds its GPU: a newcomer, with the same
  config (the supervisor keeps its name until down) or another model on
  the same GPU (the ledger entry is 'stopping'), starts only once it is
  gone, never beside it; even when both shares fit (vLLM's start-up
  misjudges the free memory while another process frees some)."""
  first_model, second_model = model_copies(TINY_MODEL_DIR, tmp_path)
  etcd = slow_to_stop_etcd(tmp_path)
  flags = tuple(FAST_MOCKER.items()) + (
      (('gpu-memory-utilization', share), ) if share else ())
  old_config = mocker_config(first_model, gpus=(0, ), etcd_binary=etcd,
                             shutdown_grace_s=10, engine_args=flags)
  new_config = old_config if same_config else mocker_config(
      second_model, gpus=(0, ), etcd_binary=etcd, shutdown_grace_s=10,
      engine_args=flags)
  old_holder, new_holder = Holder(), Holder()
  old_lease = registry.acquire(old_config, old_holder)
  old = old_lease.wait_ready(60)
  old_pids = set(old.pids.values()) | {old.supervisor_pid}
  book = Ledger()
  registry.drop(old_lease, old_holder)  # its last holder: the stack stops
  wait_until(lambda: [e for e in book.entries().values()
                      if e.state == 'stopping'],
             30, "the old stack's ledger entry 'stopping'")
  new = registry.acquire(new_config, new_holder).wait_ready(90)
  assert new.supervisor_pid != old.supervisor_pid
  # The old etcd wrapper ignores SIGTERM for shutdown_grace_s: a new stack
  # started beside the stopping one would be ready long before it is gone.
  alive = [pid for pid in old_pids if psutil.pid_exists(pid) and
           psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
  assert not alive, f'old stack processes beside the new one: {alive}'
  entry, = book.entries().values()
  assert entry.pid == new.supervisor_pid and entry.state == 'running'
  del old_holder, new_holder, old_lease


def test_an_engine_restart_counts_as_starting_until_ready_again(no_leftovers):
  """Restarted engines measure the GPU's free memory again: the stack
  takes a turn in the ledger as a start (others wait their turn), then is
  'running' again."""
  holder = Holder()
  lease = registry.acquire(mocker_config(gpus=(0, )), holder)
  state = lease.wait_ready(60)
  book = Ledger()
  (entry, ) = book.entries().values()
  assert (entry.state, entry.starts) == ('running', 1)
  os.kill(state.pids['engine'], signal.SIGKILL)
  lease.wait_for(lambda s: s.generation >= 2 and s.phase == 'ready', 60)
  (entry, ) = book.entries().values()
  assert (entry.state, entry.starts) == ('running', 2)
  del holder, lease
