"""What the benchmarks share: when inputs reached RunInference and results
left it (for throughput), CPU time, and cleaning up after apache-beam 2.77.

Throughput = output tokens / (last result - first input at RunInference):
results of one batch leave together, so timing between results would
leave out the first batch.

A module of its own (not bench.py, which runs as __main__) so Beam pickles
``record`` by reference and, in the in-process DirectRunner, every call
appends to this one list.
"""

import json
import os
import subprocess
import time

RESULT_TIMES: list[float] = []
MARKS: dict[str, float] = {}


def mark_start(element):
  """Placed right before RunInference: when the first input arrives there
  (Beam's job setup is over; batching and inference begin)."""
  if 'start' not in MARKS:
    MARKS['cpu_at_start'] = process_cpu_s()
    MARKS['start'] = time.monotonic()
  return element


def process_cpu_s() -> float:
  """User + system CPU seconds of this process so far (all threads)."""
  return sum(os.times()[:2])


def record(result) -> int:
  RESULT_TIMES.append(time.monotonic())
  return result.inference.usage.completion_tokens


def record_total(tokens: int) -> None:
  MARKS['tokens'] = tokens


def mark_load_model(handler_class) -> None:
  """Records when the first load_model call starts (patched in-process)."""
  original = handler_class.load_model

  def load_model(self):
    MARKS.setdefault('load_model', time.monotonic())
    return original(self)

  handler_class.load_model = load_model


def reap_children() -> int:
  """apache-beam 2.77 leaves its etcd, frontend and engine running (and, on
  a GPU, holding its memory) after the pipeline (NOTES.md): kill them so
  they don't skew the next run. Returns how many there were."""
  import psutil
  left = [p for p in psutil.Process().children(recursive=True)
          if p.status() != psutil.STATUS_ZOMBIE]
  for process in left:
    process.kill()
  psutil.wait_procs(left, timeout=30)
  return len(left)


def run_child(command: list[str], label: str, timeout_s: float) -> dict:
  """Runs one benchmark child process; returns the JSON of its RESULT line."""
  done = subprocess.run(command, capture_output=True, text=True,
                        timeout=timeout_s)
  line = next((l for l in done.stdout.splitlines() if l.startswith('RESULT ')),
              None)
  if done.returncode or line is None:
    raise RuntimeError(f'{label} failed:\n{done.stderr[-3000:]}')
  return json.loads(line[len('RESULT '):])
