"""Kills a stack's process groups when their owner dies, however it dies.

The owner (the stack supervisor) starts this as ``python -m
apache_beam_dynamo.processes.reaper`` in a session of its own and keeps the write end
of its stdin. It tells the reaper which process groups and directories it
owns. When stdin reaches end-of-file the owner is gone (exit, crash or
SIGKILL: the kernel closes the pipe in every case), so the reaper SIGKILLs
every group still registered and removes every directory, then exits. A
clean owner deregisters everything first, so its exit costs nothing.

Protocol, one command per line: ``group PGID``, ``forget-group PGID``,
``dir PATH``, ``forget-dir PATH``.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading


def _serve(stream) -> None:
  groups: set[int] = set()
  dirs: set[str] = set()
  for line in stream:
    command, _, argument = line.rstrip('\n').partition(' ')
    if command == 'group':
      groups.add(int(argument))
    elif command == 'forget-group':
      groups.discard(int(argument))
    elif command == 'dir':
      dirs.add(argument)
    elif command == 'forget-dir':
      dirs.discard(argument)
  for pgid in groups:
    try:
      os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  for path in dirs:
    shutil.rmtree(path, ignore_errors=True)


class Reaper:
  """The owner's side: starts the reaper and registers what it must clean."""
  def __init__(self):
    self._lock = threading.Lock()
    self._popen = subprocess.Popen(
        [sys.executable, '-m', 'apache_beam_dynamo.processes.reaper'],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        text=True)

  def _send(self, command: str, argument) -> None:
    with self._lock:
      self._popen.stdin.write(f'{command} {argument}\n')
      self._popen.stdin.flush()

  def watch_group(self, pgid: int) -> None:
    self._send('group', pgid)

  def forget_group(self, pgid: int) -> None:
    self._send('forget-group', pgid)

  def watch_dir(self, path: str) -> None:
    self._send('dir', path)

  def forget_dir(self, path: str) -> None:
    self._send('forget-dir', path)

  def close(self) -> None:
    """Ends the reaper after a clean stop (nothing is registered any more)."""
    with self._lock:
      self._popen.stdin.close()
    self._popen.wait()


if __name__ == '__main__':
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _serve(sys.stdin)
