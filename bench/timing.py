"""When each result reached the end of the pipeline.

A module of its own (not bench.py, which runs as __main__) so Beam pickles
``record`` by reference and, in the in-process DirectRunner, every call
appends to this one list.
"""

import time

RESULT_TIMES: list[float] = []


def record(result) -> int:
  RESULT_TIMES.append(time.monotonic())
  return result.inference.usage.completion_tokens

MARKS: dict[str, float] = {}


def record_total(tokens: int) -> None:
  MARKS['tokens'] = tokens


def mark_load_model(handler_class) -> None:
  """Records when the first load_model call starts (patched in-process)."""
  original = handler_class.load_model

  def load_model(self):
    MARKS.setdefault('load_model', time.monotonic())
    return original(self)

  handler_class.load_model = load_model
