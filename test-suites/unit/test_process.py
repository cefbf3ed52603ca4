"""Process supervision with real (tiny) child processes."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from apache_beam_dynamo.serving import components, ports
from apache_beam_dynamo.errors import ComponentFailure, DynamoHandlerError
from apache_beam_dynamo.processes.launch import Launch
from apache_beam_dynamo.processes.process import (
    ManagedProcess, forwarded_level, group_alive, line_level)
from apache_beam_dynamo.processes.reaper import Reaper

from conftest import wait_until

# A parent that starts a grandchild in its own process group, like
# dynamo.vllm starting vLLM's EngineCore, then waits.
_FAMILY = '''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("child", child.pid, flush=True)
print("WARN something odd", flush=True)
time.sleep(60)
'''


def _launch(code, component='engine'):
  return Launch.of(component, [sys.executable, '-c', code], dict(os.environ))


def _exited(code, sink=lambda *_: None, **options) -> ManagedProcess:
  """A child running ``code``, once it has exited."""
  process = ManagedProcess(_launch(code), sink, **options)
  wait_until(lambda: not process.alive(), 10, 'the child to exit')
  return process


def _collect():
  lines = []
  return lines, lambda component, level, line: lines.append(
      (component, level, line))


def test_stop_kills_the_whole_process_group():
  lines, sink = _collect()
  process = ManagedProcess(_launch(_FAMILY), sink)
  wait_until(lambda: any('child' in l[2] for l in lines), 10, 'the grandchild')
  grandchild = int(next(l[2] for l in lines if 'child' in l[2]).split()[1])
  assert os.getpgid(grandchild) == process.pgid != os.getpgid(0)
  process.stop(grace_s=5)
  assert not process.alive()
  assert not psutil.pid_exists(grandchild) or (
      psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE)
  assert not group_alive(process.pgid)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored():
  code = ('import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);'
          'print("up", flush=True); time.sleep(60)')
  lines, sink = _collect()
  process = ManagedProcess(_launch(code), sink)
  wait_until(lambda: lines, 10, 'the first line')
  assert process.stop(grace_s=0.5) == -signal.SIGKILL
  assert not group_alive(process.pgid)


def test_output_is_forwarded_with_levels_and_kept_as_tail():
  lines, sink = _collect()
  process = _exited(
      'import sys; [print("line", i) for i in range(100)];'
      'print("ERROR boom", file=sys.stderr); sys.exit(3)', sink, tail_lines=10)
  failure = process.failure('exited unexpectedly')
  assert failure.exit_code == 3
  assert failure.log_tail[-1] == 'ERROR boom'
  assert len(failure.log_tail) == 10
  assert 'engine: exited unexpectedly (exit code 3)' in str(failure)
  assert ('engine', 40, 'ERROR boom') in lines


def test_failure_keeps_the_first_error_the_tail_lost():
  # like vLLM: EngineCore's traceback (the root cause), then the engine's
  # own long traceback that fills the tail
  process = _exited(
      'import sys; print("INFO starting");'
      'print("ERROR EngineCore failed to start.", file=sys.stderr);'
      'print("ValueError: Free memory on device", file=sys.stderr);'
      '[print("  File x, line", i) for i in range(100)];'
      'print("RuntimeError: Engine core initialization failed");'
      'sys.exit(1)', tail_lines=10, first_error_lines=3)
  failure = process.failure('exited during startup')
  assert failure.first_error == (
      'ERROR EngineCore failed to start.',
      'ValueError: Free memory on device', '  File x, line 0')
  message = str(failure)
  assert message.index('ValueError: Free memory') < message.index(
      'RuntimeError: Engine core initialization failed')
  assert 'INFO starting' not in message


def test_no_first_error_block_when_the_tail_shows_it():
  failure = _exited(
      'import sys; print("ERROR boom"); print("after"); sys.exit(1)').failure(
          'exited')
  assert failure.first_error == ()
  assert str(failure).count('ERROR boom') == 1


@pytest.mark.parametrize('line, level', [
    ('2026-11-22T06:15:04.222525Z  WARN mm_routing: x', 30),
    ('2026-11-22T06:15:04.222525Z ERROR dynamo: x', 40),
    ('INFO 11-22 06:00:00 [core.py:1] Engine started', 20),
    ('(EngineCore pid=12) WARNING 11-22 something', 30),
    ('{"level":"warn","ts":"2026-11-22T06:55:50.452Z","msg":"x"}', 30),
    ('Traceback (most recent call last):', 40),
    ('plain text', 20),
])
def test_line_level(line, level):
  assert line_level(line) == level


@pytest.mark.parametrize('line, level', [
    ('2026-11-22T06:15:04.222525Z  INFO dynamo_runtime: ZMQ PUB bound', 10),
    ('[transformers] PyTorch was not found.', 10),
    ('2026-11-22T06:15:04.222525Z DEBUG dynamo: x', 10),
    ('2026-11-22T06:15:04.222525Z  WARN mm_routing: x', 30),
    ('{"level":"warn","ts":"2026-11-22T06:55:50.452Z","msg":"x"}', 30),
    # etcd's warning at every start (no auth here): not news
    ('{"level":"warn","ts":"2026-12-01T19:42:45.187Z","caller":"auth/store.go:1220",'
     '"msg":"simple token is not cryptographically signed"}', 10),
    ('2026-11-22T06:15:04.222525Z ERROR dynamo: x', 40),
])
def test_info_lines_are_forwarded_at_debug(line, level):
  assert forwarded_level(line) == level


def test_reaper_kills_registered_groups_when_its_owner_dies(tmp_path):
  # The owner is a separate process that registers a group and a dir with
  # its reaper, then is SIGKILLed.
  marker = tmp_path / 'run'
  owner_code = f'''
import subprocess, sys, time, os
from apache_beam_dynamo.processes.reaper import Reaper
reaper = Reaper()
victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                          start_new_session=True)
os.mkdir({str(marker)!r})
reaper.watch_group(victim.pid)
reaper.watch_dir({str(marker)!r})
print(victim.pid, flush=True)
time.sleep(60)
'''
  owner = subprocess.Popen([sys.executable, '-c', owner_code],
                           stdout=subprocess.PIPE, text=True)
  victim = int(owner.stdout.readline())
  assert psutil.pid_exists(victim) and marker.exists()
  owner.kill()
  owner.wait()
  wait_until(lambda: not psutil.pid_exists(victim) or psutil.Process(
      victim).status() == psutil.STATUS_ZOMBIE, 5, 'the reaper to kill the group')
  wait_until(lambda: not marker.exists(), 5, 'the reaper to remove the dir')


def test_reaper_leaves_forgotten_groups_alone():
  victim = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],
                            start_new_session=True)
  reaper = Reaper()
  reaper.watch_group(victim.pid)
  reaper.forget_group(victim.pid)
  reaper.close()
  assert victim.poll() is None
  victim.kill()
  victim.wait()


def test_ports_are_free_distinct_and_in_range(monkeypatch):
  monkeypatch.setenv(ports.PORT_RANGE_ENV, '21000-21050')
  picked = ports.pick_ports(4)
  assert len(set(picked)) == 4
  assert all(21000 <= p <= 21050 and ports.is_free(p) for p in picked)


def test_no_free_port_is_a_clear_error(monkeypatch):
  import socket
  holder = socket.socket()
  holder.bind(('127.0.0.1', 0))
  taken = holder.getsockname()[1]
  holder.listen()
  monkeypatch.setenv(ports.PORT_RANGE_ENV, f'{taken}-{taken}')
  try:
    with pytest.raises(ports.NoFreePortError, match='No free TCP port'):
      ports.pick_ports(1)
  finally:
    holder.close()


def test_bad_port_range(monkeypatch):
  monkeypatch.setenv(ports.PORT_RANGE_ENV, 'x')
  with pytest.raises(DynamoHandlerError, match='LOW-HIGH'):
    ports.port_range()


@pytest.mark.parametrize('first_error, tail, conflict', [
    (('OSError: [Errno 98] Address already in use', ), ('RuntimeError: x', ),
     True),
    ((), ('zmq.error.ZMQError: Address in use', ), True),
    (('ValueError: Free memory on device', ), ('RuntimeError: x', ), False),
])
def test_port_conflict_is_found_in_the_first_error_too(first_error, tail,
                                                       conflict):
  failure = ComponentFailure(
      'engine', 'exited during startup', log_tail=tail,
      first_error=first_error)
  assert components.port_conflict(failure) is conflict
