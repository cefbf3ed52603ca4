"""What bench/startup_compare.py's pipeline records: when the first prompt
reached RunInference, and (time, output tokens) of every result. A module
of its own so Beam pickles these functions by reference and, in the
in-process DirectRunner, every call appends to this one list."""

import time

RESULTS: list[tuple[float, int]] = []
MARKS: dict[str, float] = {}


def mark_start(element):
  MARKS.setdefault('start', time.monotonic())
  return element


def record(result) -> None:
  RESULTS.append((time.monotonic(), result.inference.usage.completion_tokens))
