#!/usr/bin/env python3
"""Pictures and tables from bench/startup_compare.py's results.

    python bench/plot_gpu.py RESULTS_DIR [--out DIR] [--table | --ratios]

RESULTS_DIR holds one folder per device call (``startup.json`` and the
stamped ``<step>.log`` files, gzipped or not) and ``plot.json`` (which
runs to draw). Each step's timeline is re-read from its log with
startup_phases.phases(), so milestones added later apply to old runs too. Writes ``startup_timeline.png`` (start-up per phase, ours and
vLLM alone, cold and warm) and ``cumulative_tokens.png`` (output tokens
over time since the process was spawned); ``--table`` prints the phase
table (markdown) for docs/gpu.md, ``--ratios`` issue 12's numbers and
their ratios to the offline engine. Needs matplotlib (not a dependency of
the package: use a separate virtual environment).
"""

import argparse
import functools
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import startup_phases  # pylint: disable=wrong-import-position

# (milestone that ends the segment, segment label); a segment runs from the
# previous milestone found in the run to this one.
SEGMENTS = [
    ('imports done', 'process start + imports (vLLM / Beam + package)'),
    ('load_model called', 'Beam pipeline setup until load_model'),
    ('start cache restored', 'start cache restored (compile_cache)'),
    ('engine process seen', 'supervisor, etcd, frontend, engine launched'),
    ('dynamo.vllm first log line', 'dynamo.vllm imports (torch, vLLM, Dynamo)'),
    ('model resolved', 'engine args; model inspection (cold: modelinfos cache miss)'),
    ('engine config built', 'EngineCore process start (spawn: re-imports)'),
    ('weights: loaded', 'device init + weights'),
    ('compile: done', 'torch.compile (bytecode transform + compile or cache load)'),
    ('KV cache: allocated', 'profiling run + KV cache'),
    ('CUDA graphs captured', 'CUDA graph capture'),
    ('kernel warm-up done', 'kernel warm-up (Triton JIT)'),
    ('engine core ready', 'engine core ready'),
    ('engine client ready', 'engine client ready'),
    ('ready (warm-up done)', 'registration, model listed, warm-up request'),
    ('first result', 'first batch (ours) / first request done (vLLM)'),
]
COLORS = {
    label: color for (_, label), color in zip(SEGMENTS, [
        '#9e9e9e', '#bcaaa4', '#7e57c2', '#ffcc80', '#ef9a9a', '#ce93d8', '#e53935',
        '#90caf9', '#1e88e5', '#80cbc4', '#43a047', '#fdd835', '#6d4c41',
        '#455a64', '#ff7043', '#000000'])
}


def runs(results: str) -> dict:
  """RESULTS_DIR/plot.json: which (folder, step) pairs to draw, labelled:
  ``timeline``: [[folder, step, label]], ``tokens``: [[folder, step, label,
  line style]], ``note``: a footnote for the timeline."""
  with open(os.path.join(results, 'plot.json')) as f:
    return json.load(f)


def read_log(path: str) -> list[tuple[float, str]]:
  lines = []
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', errors='replace') as f:
    for raw in f:
      head, _, rest = raw.rstrip('\n').lstrip().partition(' ')
      try:
        lines.append((float(head), rest))
      except ValueError:
        continue
  return lines


def timeline(results: str, folder: str, step: str) -> dict:
  """The step's phases, from its stamped log (gzipped or not) or, where
  the log did not come back from the device, from startup.json."""
  path = os.path.join(results, folder, startup_phases.log_name(step))
  logs = [p for p in (path, path + '.gz') if os.path.exists(p)]
  if logs:
    phases = startup_phases.phases(read_log(logs[0]))
  else:
    phases = dict(step_numbers(results, folder, step).get('phases', {}))
  points = cumulative(results, folder, step)
  if step.startswith('vllm') and points:
    # runs before 2026-12-01 15:00 marked the first "request" from the
    # adding-requests bar: use the first request that finished
    phases['first result'] = round(points[0][0], 3)
  return phases


def segments(phases: dict) -> list[tuple[str, float, float]]:
  """(label, start, end) of each phase found, in order."""
  out, last = [], 0.0
  for milestone, label in SEGMENTS:
    if milestone in phases and phases[milestone] >= last:
      out.append((label, last, phases[milestone]))
      last = phases[milestone]
  return out


def plot_timeline(results: str, out: str) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(13, 6.5))
  used = {}
  chosen = runs(results)
  rows = chosen['timeline']
  for row, (folder, step, label) in enumerate(rows):
    for name, start, end in segments(timeline(results, folder, step)):
      used[name] = ax.barh(row, end - start, left=start, color=COLORS[name],
                           edgecolor='white', linewidth=0.5)
  ax.set_yticks(range(len(rows)), [r[2] for r in rows])
  ax.invert_yaxis()
  ax.set_xlabel('seconds since the process was spawned')
  ax.set_title('Start-up per phase on one H200 (vLLM 0.26, ai-dynamo 1.4.2): '
               'until the first result')
  ax.grid(axis='x', alpha=0.3)
  ax.text(0, len(rows) - 0.35, chosen.get('note', ''), fontsize=7, va='top')
  fig.tight_layout(rect=(0, 0.2, 1, 1))
  fig.legend(used.values(), used.keys(), fontsize=8, loc='lower center', ncol=3)
  path = os.path.join(out, 'startup_timeline.png')
  fig.savefig(path, dpi=110)
  return path


@functools.lru_cache(maxsize=None)
def _startup_json(results: str, folder: str) -> dict:
  """A device call's startup.json (up to a few MB), read once."""
  with open(os.path.join(results, folder, 'startup.json')) as f:
    return json.load(f)


def step_numbers(results: str, folder: str, step: str) -> dict:
  """One step's numbers (shared: do not modify)."""
  return _startup_json(results, folder)['steps'].get(step, {})


def cumulative(results: str, folder: str, step: str) -> list[tuple[float, int]]:
  numbers = step_numbers(results, folder, step)
  points = []
  if 'finished' in numbers:
    # the offline engine's progress bar: one update per finished request
    # (n == 1); the updates before them (n > 1) count requests being added
    per_request = numbers['tokens'] / numbers['results']
    done = [t for t, n in numbers['finished'] if n == 1]
    points = [(t, (i + 1) * per_request) for i, t in enumerate(sorted(done))]
  elif 'results_t' in numbers:
    total = 0
    for t, tokens in sorted(numbers['results_t']):
      total += tokens
      points.append((t, total))
  return points


def plot_tokens(results: str, out: str) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 5))
  for folder, step, label, style in runs(results)['tokens']:
    points = cumulative(results, folder, step)
    if points:
      xs = [0.0] + [p[0] for p in points]
      ys = [0.0] + [p[1] / 1e6 for p in points]
      ax.step(xs, ys, where='post', linestyle=style, label=label)
  ax.set_xlabel('seconds since the process was spawned')
  ax.set_ylabel('output tokens (millions)')
  ax.set_title('12,288 prompts, ~128 tokens in, 128 out, one H200')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(out, 'cumulative_tokens.png')
  fig.savefig(path, dpi=110)
  return path


def table(results: str) -> str:
  rows = [(label, segments(timeline(results, folder, step)))
          for folder, step, label in runs(results)['timeline']]
  names = [label for _, label in SEGMENTS]
  lines = ['| phase | ' + ' | '.join(label for label, _ in rows) + ' |',
           '| --- |' + ' ---: |' * len(rows)]
  for name in names:
    cells = []
    for _, segs in rows:
      found = [end - start for label, start, end in segs if label == name]
      cells.append(f'{found[0]:.1f}' if found else '')
    if any(cells):
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  ends = [f'**{segs[-1][2]:.1f}**' if segs else '' for _, segs in rows]
  lines.append('| **until the last phase shown** | ' + ' | '.join(ends) + ' |')
  return '\n'.join(lines)


def job_done(results: str, folder: str, step: str) -> float:
  """Seconds since spawn when the job's work was done: ``generate``
  returned (vLLM), or ``pipeline.run().wait_until_finish()`` did."""
  numbers = step_numbers(results, folder, step)
  if 'pipeline_wall_s' not in numbers:
    return timeline(results, folder, step)['generate returned']
  first = cumulative(results, folder, step)[0][0]
  return (first - numbers['first_result_after_pipeline_run_s'] +
          numbers['pipeline_wall_s'])


def ratios(results: str, reference: str = 'vllm-warm') -> str:
  """Issue 12's numbers for every run in plot.json's ``tokens`` list, and
  their ratios to the offline engine's (``reference``): first result since
  spawn against ``LLM()`` ready, steady tok/s (``generate`` for vLLM; first
  to last result for a pipeline, whose first batch is start-up), job wall
  (spawn to exit) and job done (spawn to the end of ``generate`` or of the
  pipeline: runs before 2026-12-01 20:00 spent 1.7-2.9 s between that and
  their exit on the benchmark's own arithmetic, quadratic in the results)."""
  rows = runs(results)['tokens']
  ref_folder = next(folder for folder, step, *_ in rows if step == reference)
  ref = step_numbers(results, ref_folder, reference)
  ref_ready = timeline(results, ref_folder, reference)['engine client ready']
  ref_done = job_done(results, ref_folder, reference)
  lines = [f'| run | first result (s) | / `LLM()` ready ({ref_ready:.1f} s) '
           f'| steady tok/s | / `generate` ({ref["tokens_per_s"]:,.0f}) '
           f'| job wall (s) | / {ref["process_wall_s"]:.1f} s '
           f'| job done (s) | / {ref_done:.1f} s |',
           '| --- |' + ' ---: |' * 8]
  for folder, step, label, _ in rows:
    numbers = step_numbers(results, folder, step)
    points = cumulative(results, folder, step)
    if not points or numbers.get('prompts') != ref.get('prompts'):
      continue
    steady = numbers.get('tokens_per_s_after_first_result',
                         numbers.get('tokens_per_s'))
    first, wall = points[0][0], numbers['process_wall_s']
    done = job_done(results, folder, step)
    lines.append(
        f'| {label} | {first:.1f} | {first / ref_ready:.2f}x | {steady:,.0f} | '
        f'{steady / ref["tokens_per_s"]:.2f}x | {wall:.1f} | '
        f'{wall / ref["process_wall_s"]:.2f}x | {done:.1f} | '
        f'{done / ref_done:.2f}x |')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('results')
  parser.add_argument('--out', default=None)
  printed = parser.add_mutually_exclusive_group()
  printed.add_argument('--table', action='store_true')
  printed.add_argument('--ratios', action='store_true')
  args = parser.parse_args(argv)
  if args.table:
    print(table(args.results))
    return
  if args.ratios:
    print(ratios(args.results))
    return
  out = args.out or args.results
  print(plot_timeline(args.results, out))
  print(plot_tokens(args.results, out))


if __name__ == '__main__':
  main()
