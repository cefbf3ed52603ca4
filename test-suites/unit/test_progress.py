"""The progress line: one every interval while batches run, none on short
runs, counted afresh after a pause."""

import logging

from apache_beam_dynamo.beam.progress import Progress


class Lines(logging.Handler):
  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def progress():
  logger = logging.getLogger('test_progress')
  logger.setLevel(logging.INFO)
  sink = Lines()
  logger.handlers = [sink]
  return Progress(interval_s=10, logger=logger), sink.lines


def test_a_line_every_interval_of_a_long_run():
  tracker, lines = progress()
  for second in range(0, 31, 2):
    tracker.begin(now=100 + second)
    tracker.done(100, 1 if second == 4 else 0, now=101 + second)
  assert lines == [
      '600 elements done in 11 s (55/s), 1 failed',
      '1100 elements done in 21 s (52/s), 1 failed',
      # 31 s: the third line is due at 31 s, after the last batch's end
      '1600 elements done in 31 s (52/s), 1 failed',
  ]


def test_a_short_run_logs_nothing_and_a_pause_starts_afresh():
  tracker, lines = progress()
  tracker.begin(now=0)
  tracker.done(50, 0, now=5)
  assert lines == []
  tracker.begin(now=100)  # a new pipeline in the same process
  tracker.done(20, 0, now=111)
  assert lines == ['20 elements done in 11 s (2/s), 0 failed']
