"""When the owner of a stack dies, nothing it started survives it.

The promise is a time: the children are gone within 5 s of their owner's
death. That bound is asserted; everything else waits on states.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from apache_beam_dynamo.runtime.registry import registry

from conftest import (
    Holder, mocker_config, pipeline_script, requests_served, stack_leftovers,
    serving_pids, wait_for_no_leftovers, wait_until)

# Holds a lease until killed; prints the ready stack's state first.
_HOLD_A_STACK = '''
import dataclasses, json, sys
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.runtime.registry import registry
class Holder: pass
holder = Holder()
state = registry.acquire(StackConfig.from_json(sys.argv[1]), holder).wait_ready(60)
print(json.dumps(dataclasses.asdict(state)), flush=True)
sys.stdin.read()
'''
OWNER_DEATH_PROMISE_S = 5.0


def start_holder():
  """A process holding the only lease on a stack; returns it and the
  stack's ready state."""
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLD_A_STACK, mocker_config().to_json()],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  return holder, json.loads(holder.stdout.readline())


def assert_gone_within_promise(started: float, what: str) -> None:
  left = wait_for_no_leftovers(timeout_s=OWNER_DEATH_PROMISE_S * 4)
  elapsed = time.monotonic() - started
  assert not left, f'survived their owner: {left}'
  print(f'{what}: stack gone in {elapsed:.1f} s')
  assert elapsed < OWNER_DEATH_PROMISE_S


def test_sigkill_of_a_script_holding_the_stack(no_leftovers):
  holder, state = start_holder()
  assert {'etcd', 'frontend', 'engine'} <= set(state['pids'])
  holder.kill()
  started = time.monotonic()
  holder.wait()
  assert_gone_within_promise(started, 'script SIGKILLed')


def test_sigkill_of_the_supervisor(no_leftovers):
  holder, state = start_holder()
  os.kill(state['supervisor_pid'], signal.SIGKILL)
  started = time.monotonic()
  # The reaper kills every process group and removes the run directory.
  try:
    assert_gone_within_promise(started, 'supervisor SIGKILLed')
  finally:
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
    wait_until(lambda: requests_served() > 0, 180, 'requests to flow')
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
    gone = lambda: not serving_pids()
    try:
      wait_until(gone, OWNER_DEATH_PROMISE_S * 4, 'the stack to go')
    finally:
      elapsed = time.monotonic() - started
    print(f'SDK worker SIGKILLed: stack gone in {elapsed:.1f} s')
    assert elapsed < OWNER_DEATH_PROMISE_S
  finally:
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()


def _resources():
  me = psutil.Process()
  return {
      'threads': me.num_threads(),
      'fds': me.num_fds(),
      'children': len(me.children(recursive=True)),
      'leftovers': len(stack_leftovers()),
  }


def test_twenty_start_stop_cycles_leak_nothing(no_leftovers):
  seen = []
  for _ in range(20):
    holder = Holder()
    registry.acquire(mocker_config(), holder).wait_ready(60)
    del holder  # last user gone: the stack stops (keep_alive_s=0)
    assert not wait_for_no_leftovers()
    seen.append(_resources())
  # Some of the client's threads end a moment after their stack (a lease's
  # reader, the registry's idle check, an expiry timer): wait for them to
  # settle back to what one cycle left, then compare. A leak never settles.
  settled = lambda: all(v <= seen[0][k] for k, v in _resources().items())
  try:
    wait_until(settled, 30, 'threads and descriptors to settle')
  finally:
    seen.append(_resources())
    print('after cycles 1 and 20:', seen[0], seen[-1])
  for key in seen[0]:
    assert seen[-1][key] <= seen[0][key], (key, seen[0], seen[-1])
