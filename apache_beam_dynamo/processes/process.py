"""Supervision of one child program.

Each child runs in its own session, hence its own process group, so that
stopping it reaches every process it spawned (vLLM's EngineCore included),
and so that a signal meant for the parent (Ctrl-C) does not hit it directly.
Its output is forwarded line by line (INFO lines at DEBUG); the recent tail
and the lines from its first error on are kept for error messages (a
failing vLLM engine's root cause is its EngineCore's traceback, which the
engine's own wrapper traceback pushes out of the tail).
"""

import collections
import logging
import os
import re
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.processes.launch import Launch

LineSink = Callable[[str, int, str], None]  # component, logging level, line

_LEVEL_WORDS = {
    'CRITICAL': logging.CRITICAL,
    'FATAL': logging.CRITICAL,
    'ERROR': logging.ERROR,
    'WARNING': logging.WARNING,
    'WARN': logging.WARNING,
    'INFO': logging.INFO,
    'DEBUG': logging.DEBUG,
    'TRACE': logging.DEBUG,
}
_LEVEL_RE = re.compile(r'\b(CRITICAL|FATAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE)\b')
_JSON_LEVEL_RE = re.compile(r'"level":\s*"(\w+)"')  # etcd's JSON log lines
_ANSI_RE = re.compile(r'\x1b\[[0-9;]*m')
# Warnings every healthy stack prints, forwarded at DEBUG like INFO lines.
_EXPECTED_WARNINGS = (
    # etcd 3.5 at every start: the embedded etcd has no auth (and listens on
    # loopback only), so its unsigned token scheme is never used
    'simple token is not cryptographically signed',
)


def line_level(line: str) -> int:
  """The level a child printed a line at (Dynamo, vLLM and etcd formats)."""
  match = _LEVEL_RE.search(line[:64])
  if match:
    return _LEVEL_WORDS[match.group(1)]
  match = _JSON_LEVEL_RE.search(line[:64])
  if match:
    return _LEVEL_WORDS.get(match.group(1).upper(), logging.INFO)
  return logging.ERROR if line.startswith('Traceback') else logging.INFO


def forwarded_level(line: str) -> int:
  """The level a child's line is forwarded at: its own for warnings and
  errors; DEBUG for INFO and below (Dynamo's INFO lines are its plumbing:
  endpoints, etcd keys, discovery events), so the stack is quiet unless
  ``apache_beam_dynamo`` logs at DEBUG. A few warnings every healthy stack
  prints (``_EXPECTED_WARNINGS``) come at DEBUG too."""
  level = line_level(line)
  if level == logging.WARNING and any(w in line for w in _EXPECTED_WARNINGS):
    return logging.DEBUG
  return level if level > logging.INFO else logging.DEBUG


def group_alive(pgid: int) -> bool:
  try:
    os.killpg(pgid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def signal_group(pgid: int, signum: int) -> None:
  try:
    os.killpg(pgid, signum)
  except ProcessLookupError:
    pass


class ManagedProcess:
  """A started child in its own process group, with its log tail."""
  def __init__(
      self, launch: Launch, on_line: LineSink, *, tail_lines: int = 60,
      first_error_lines: int = 40):
    self.component = launch.component
    self._on_line = on_line
    self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    self._first_error: list[str] = []
    self._first_error_lines = first_error_lines
    self._popen = subprocess.Popen(
        list(launch.argv),
        env=launch.environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True)
    self.pid = self._popen.pid
    self.pgid = self._popen.pid  # a session leader leads its process group
    self._pump = threading.Thread(
        target=self._pump_output,
        name=f'abd-log-{self.component}',
        daemon=True)
    self._pump.start()

  def _pump_output(self) -> None:
    for raw in iter(self._popen.stdout.readline, b''):
      line = _ANSI_RE.sub('', raw.decode('utf-8', errors='replace').rstrip())
      if not line:
        continue
      self._tail.append(line)
      level = forwarded_level(line)
      if (self._first_error or level >= logging.ERROR) and (
          len(self._first_error) < self._first_error_lines):
        self._first_error.append(line)
      self._on_line(self.component, level, line)
    self._popen.stdout.close()

  def exit_code(self) -> Optional[int]:
    return self._popen.poll()

  def alive(self) -> bool:
    return self._popen.poll() is None

  def tail(self) -> list[str]:
    # Let the pump drain what an exiting child printed last.
    if self._popen.poll() is not None:
      self._pump.join(timeout=1.0)
    return list(self._tail)

  def failure(self, reason: str, remedy: str = '') -> ComponentFailure:
    tail = self.tail()
    # the first error's lines, unless the tail still shows where it began
    shown = not self._first_error or self._first_error[0] in tail
    return ComponentFailure(
        self.component,
        reason,
        exit_code=self.exit_code(),
        log_tail=tail,
        first_error=() if shown else self._first_error,
        remedy=remedy)

  def stop(self, grace_s: float) -> Optional[int]:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL what is left.

    Returns the leader's exit code. Waits until every process of the group
    is gone (a GPU is only free once the engine's workers have exited).
    """
    signal_group(self.pgid, signal.SIGCONT)  # a stopped group can't exit
    signal_group(self.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
      if self._popen.poll() is not None and not group_alive(self.pgid):
        break
      time.sleep(0.02)
    return self.kill()

  def kill(self) -> Optional[int]:
    """SIGKILL the whole group at once and reap the leader."""
    signal_group(self.pgid, signal.SIGKILL)
    code = self._popen.wait()
    deadline = time.monotonic() + 5.0
    while group_alive(self.pgid) and time.monotonic() < deadline:
      time.sleep(0.02)
    self._pump.join(timeout=2.0)
    return code
