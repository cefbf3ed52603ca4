"""When the owner of a stack dies, nothing it started survives it."""

import os
import signal
import subprocess
import sys
import time

import psutil

from apache_beam_dynamo.config import StackConfig
from apache_beam_dynamo.shared_stack import registry

from conftest import (
    FAST_MOCKER, pipeline_script, stack_leftovers, stack_pids,
    wait_for_no_leftovers)

_HOLD_A_STACK = '''
import sys, time
from apache_beam_dynamo.config import StackConfig
from apache_beam_dynamo.shared_stack import registry
class Holder: pass
holder = Holder()
registry.acquire(StackConfig.from_json(sys.argv[1]), holder).wait_ready(60)
print("ready", flush=True)
time.sleep(600)
'''


def config(tiny_model):
  return StackConfig(
      tiny_model, use_dynamo=True, engine='mocker',
      engine_args=tuple(FAST_MOCKER.items()), keep_alive_s=0)


def start_holder(tiny_model):
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLD_A_STACK, config(tiny_model).to_json()],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'ready'
  return holder


def seconds_until_gone(started: float) -> float:
  left = wait_for_no_leftovers(timeout_s=10)
  assert not left, f'survived their owner: {left}'
  return time.monotonic() - started


def test_sigkill_of_a_script_holding_the_stack(tiny_model, no_leftovers):
  holder = start_holder(tiny_model)
  assert stack_pids('dynamo.mocker') and stack_pids('etcdbin/etcd')
  holder.kill()
  started = time.monotonic()
  holder.wait()
  elapsed = seconds_until_gone(started)
  print(f'script SIGKILLed: stack gone in {elapsed:.1f} s')
  assert elapsed < 5


def test_sigkill_of_the_supervisor(tiny_model, no_leftovers):
  holder = start_holder(tiny_model)
  supervisor, = stack_pids('apache_beam_dynamo.supervisor')
  os.kill(supervisor, signal.SIGKILL)
  started = time.monotonic()
  # The reaper kills every process group and removes the run directory.
  deadline = started + 5
  while (stack_pids('dynamo.') or stack_pids('etcdbin/etcd') or
         stack_pids('reaper')) and time.monotonic() < deadline:
    time.sleep(0.05)
  elapsed = time.monotonic() - started
  print(f'supervisor SIGKILLed: stack gone in {elapsed:.1f} s')
  assert not stack_pids('dynamo.') and not stack_pids('etcdbin/etcd')
  assert elapsed < 5
  holder.kill()
  holder.wait()


def test_sigkill_of_a_direct_runner_worker(tiny_model, no_leftovers):
  code = pipeline_script(tiny_model, prompts=100000, workers=1, max_tokens=64,
                         speedup='1', keep_alive_s=0)
  runner = subprocess.Popen([sys.executable, '-c', code],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
  try:
    deadline = time.monotonic() + 120
    while not stack_pids('dynamo.mocker') and time.monotonic() < deadline:
      time.sleep(0.1)
    time.sleep(3)  # requests are flowing
    # Beam starts the worker through a shell: take the Python process.
    workers = [
        p for p in psutil.Process(runner.pid).children(recursive=True)
        if 'sdk_worker_main' in ' '.join(p.cmdline()) and p.name() != 'sh'
    ]
    assert len(workers) == 1, 'expected one SDK worker process'
    workers[0].kill()
    started = time.monotonic()
    # The worker held the only lease: the stack goes with it (the runner
    # itself may wait for its worker forever; it is killed below).
    deadline = started + 10
    while (stack_pids('dynamo.') or stack_pids('etcdbin/etcd')) and (
        time.monotonic() < deadline):
      time.sleep(0.05)
    elapsed = time.monotonic() - started
    print(f'SDK worker SIGKILLed: stack gone in {elapsed:.1f} s')
    assert not stack_pids('dynamo.') and not stack_pids('etcdbin/etcd')
    assert elapsed < 5
  finally:
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()


def _resources():
  me = psutil.Process()
  listening = {
      c.laddr.port for c in psutil.net_connections('inet')
      if c.status == psutil.CONN_LISTEN
  }
  return {
      'threads': me.num_threads(),
      'fds': me.num_fds(),
      'children': len(me.children(recursive=True)),
      'listening_ports': len(listening),
      'run_dirs': len(stack_leftovers()),
  }


def test_twenty_start_stop_cycles_leak_nothing(tiny_model, no_leftovers):
  class Holder:
    pass

  seen = []
  for _ in range(20):
    holder = Holder()
    registry.acquire(config(tiny_model), holder).wait_ready(60)
    del holder  # last user gone: the stack stops (keep_alive_s=0)
    assert not wait_for_no_leftovers(timeout_s=15)
    seen.append(_resources())
  print('after cycles 1 and 20:', seen[0], seen[-1])
  for key in seen[0]:
    assert seen[-1][key] <= seen[0][key], (key, seen[0], seen[-1])
