"""The machine's GPU ledger (serving/ledger.py): what fits, what fails at
once and how it says so, dead and stopping entries, the bounded wait."""

import os
import subprocess
import sys

import pytest

from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.serving import commands, gpu, ledger
from apache_beam_dynamo.serving.ledger import Entry, Ledger
from apache_beam_dynamo.serving.machine import Machine


@pytest.fixture
def book(tmp_path):
  return Ledger(str(tmp_path / 'gpus.json'), wait_s=0.2, settle_s=0.2,
                poll_s=0.01)


def start(book, key, model, gpus, share):
  """Claims as a stack does, then is ready."""
  book.claim(key, model, gpus, share)
  book.mark_running(key)


def dead_pid() -> int:
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  return child.pid


def put(book, key, **fields):
  """Writes an entry as another supervisor would have."""
  entry = Entry(**{'model': 'other', 'gpus': (0, ), 'share': 0.92,
                   'pid': os.getpid(), **fields})
  with book._locked() as entries:
    entries[key] = entry


def test_the_ledger_lives_in_a_per_user_dir_of_the_temp_dir(tmp_path):
  path = ledger.default_path()
  assert path.startswith(str(os.environ['TMPDIR']))
  assert os.path.basename(os.path.dirname(path)) == f'abd-gpu-ledger-{os.getuid()}'
  Ledger().claim('k', 'm', (0, ), 0.5)
  assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == '0o700'


def test_shares_that_fit_run_side_by_side(book):
  start(book, 'a', 'model-a', (0, ), 0.4)
  start(book, 'b', 'model-b', (0, ), 0.4)
  start(book, 'c', 'model-c', (1, ), 0.92)  # another GPU: no conflict
  assert sorted(book.entries()) == ['a', 'b', 'c']
  start(book, 'd', 'model-d', (0, ), 0.2)  # 1.0 exactly still fits
  assert book.entries()['d'].share == 0.2


def test_a_stack_that_does_not_fit_fails_at_once_naming_the_one_there(book):
  book.claim('a', 'model-a', (0, 1), 0.92)
  with pytest.raises(ComponentFailure) as failure:
    book.claim('b', 'model-b', (1, ), 0.5)
  message = str(failure.value)
  assert failure.value.component == 'gpu'
  for part in ("'model-a'", 'GPUs [0, 1]', 'gpu-memory-utilization 0.92',
               f'supervisor pid {os.getpid()}', "'model-b'", '1.42',
               "'gpu-memory-utilization' in vllm_server_kwargs", 'gpus='):
    assert part in message, part
  assert sorted(book.entries()) == ['a']  # the loser recorded nothing


def test_reclaiming_its_own_key_replaces_the_entry(book):
  book.claim('a', 'model-a', (0, ), 0.92)
  book.claim('a', 'model-a', (0, ), 0.92)  # a restart after a port conflict
  assert list(book.entries()) == ['a']


def test_entries_of_dead_or_reused_pids_are_pruned(book):
  put(book, 'dead', pid=dead_pid())
  put(book, 'reused', started=1)  # our pid, but another process's start time
  book.claim('new', 'model-new', (0, ), 0.92)
  assert list(book.entries()) == ['new']


def test_an_unreadable_ledger_counts_as_empty(book):
  with open(book.path, 'w') as f:
    f.write('{not json')
  book.claim('a', 'm', (0, ), 0.92)
  assert list(book.entries()) == ['a']


def test_a_stopping_stack_holds_its_gpus_until_released(book):
  book.claim('old', 'model-old', (0, ), 0.92)
  book.mark_stopping('old')
  assert book.entries()['old'].state == ledger.STOPPING
  book.release('old')
  book.claim('new', 'model-new', (0, ), 0.92)
  assert list(book.entries()) == ['new']


class StopsWhileWaiting(Ledger):
  """A ledger whose first pause sees the stopping stack finish stopping."""
  pauses = 0

  def _pause(self):
    self.pauses += 1
    self.release('old')


def test_a_newcomer_waits_for_a_stopping_stack_then_starts(tmp_path):
  book = StopsWhileWaiting(str(tmp_path / 'gpus.json'), wait_s=60)
  book.claim('old', 'model-old', (0, ), 0.92)
  book.mark_stopping('old')
  book.claim('new', 'model-new', (0, ), 0.92)
  assert book.pauses == 1 and list(book.entries()) == ['new']


def test_the_wait_for_a_stopping_stack_is_bounded(book):
  book.claim('old', 'model-old', (0, ), 0.92)
  book.mark_stopping('old')
  with pytest.raises(ComponentFailure, match=r'stopping\) already holds it '
                     r'\(still there after waiting 0 s'):
    book.claim('new', 'model-new', (0, ), 0.92)


def test_a_running_conflict_fails_without_waiting(tmp_path):
  book = StopsWhileWaiting(str(tmp_path / 'gpus.json'), wait_s=60)
  start(book, 'old', 'model-old', (0, ), 0.5)
  start(book, 'running', 'model-running', (0, ), 0.4)
  book.mark_stopping('old')
  with pytest.raises(ComponentFailure, match="'model-running'"):
    book.claim('new', 'model-new', (0, ), 0.5)
  assert book.pauses == 0


class Settles(Ledger):
  """A ledger whose first pause sees the other stack settle: ready, or
  gone."""
  pauses = 0

  def __init__(self, path, settle):
    super().__init__(path, wait_s=60, settle_s=60)
    self.settle = settle

  def _pause(self):
    self.pauses += 1
    self.settle(self)


@pytest.mark.parametrize('other_state', [ledger.STARTING, ledger.STOPPING])
def test_a_start_waits_while_a_stack_that_fits_starts_or_stops(
    tmp_path, other_state):
  # vLLM fails its memory profiling when another process frees GPU memory
  # during its start-up: start-ups and stops take turns
  book = Settles(str(tmp_path / 'gpus.json'),
                 settle=lambda b: b.release('other'))
  put(book, 'other', share=0.4, state=other_state)
  book.claim('new', 'model-new', (0, ), 0.4)
  assert book.pauses == 1
  assert book.entries()['new'].state == ledger.STARTING


def test_a_start_beside_a_running_stack_or_on_another_gpu_does_not_wait(
    tmp_path):
  book = Settles(str(tmp_path / 'gpus.json'), settle=lambda b: None)
  put(book, 'running', share=0.4, state=ledger.RUNNING)
  put(book, 'elsewhere', gpus=(1, ), state=ledger.STARTING)
  book.claim('new', 'model-new', (0, ), 0.4)
  assert book.pauses == 0


@pytest.mark.parametrize('turn, state, starts', [
    ('mark_stopping', ledger.STOPPING, 1),
    ('mark_restarting', ledger.STARTING, 2),
])
def test_a_stop_or_restart_waits_while_another_stack_starts_on_its_gpus(
    tmp_path, turn, state, starts):
  book = Settles(str(tmp_path / 'gpus.json'),
                 settle=lambda b: b.mark_running('starter'))
  start(book, 'old', 'model-old', (0, ), 0.4)
  put(book, 'starter', share=0.4, state=ledger.STARTING)
  getattr(book, turn)('old')
  assert book.pauses == 1
  assert (book.entries()['old'].state, book.entries()['old'].starts) == (
      state, starts)


def test_a_restarted_stack_is_running_again_once_ready(book):
  start(book, 'old', 'model-old', (0, ), 0.4)
  book.mark_restarting('old')
  book.mark_running('old')
  assert (book.entries()['old'].state, book.entries()['old'].starts) == (
      ledger.RUNNING, 2)


def test_the_turns_are_bounded_and_say_so(book, caplog):
  put(book, 'stuck', share=0.4, state=ledger.STARTING)
  book.claim('new', 'model-new', (0, ), 0.4)  # after settle_s, with a warning
  start(book, 'old', 'model-old', (1, ), 0.4)
  put(book, 'stuck-1', gpus=(1, ), share=0.4, state=ledger.STARTING)
  book.mark_stopping('old')
  assert book.entries()['old'].state == ledger.STOPPING
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 2
  assert "'other'" in warnings[0] and 'starting anyway' in warnings[0]
  assert 'stopping anyway' in warnings[1]


def test_memory_share_comes_from_the_flags_then_the_gpu_then_vllm():
  assert ledger.memory_share(()) == 0.92
  assert ledger.memory_share((('gpu-memory-utilization', '0.4'), )) == 0.4
  small = gpu.engine_defaults(gpu.GpuInfo('Tesla T4', 7.5, 15360))
  assert ledger.memory_share(commands.with_defaults(small, ())) == 0.72
  assert ledger.memory_share(commands.with_defaults(
      small, (('gpu-memory-utilization', '0.3'), ))) == 0.3
  assert ledger.memory_share((('gpu-memory-utilization', 'lots'), )) == 0.92


def test_a_machine_holds_its_engines_gpus_and_the_mockers_declared_ones():
  assert Machine(engine_gpus=((0, 1), (2, 3))).held_gpus == (0, 1, 2, 3)
  assert Machine(engine_gpus=((), ), declared_gpus=(1, )).held_gpus == (1, )
  assert Machine(engine_gpus=((), ())).held_gpus == ()
