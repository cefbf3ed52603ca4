"""The numbers docs/gpu.md reports come from bench/startup_phases.py
(milestones in a step's stamped log) and bench/plot_gpu.py --ratios (issue
12's ratios to vLLM's offline engine): pure functions, checked on a small
made-up results folder."""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'bench'))
import plot_gpu  # pylint: disable=wrong-import-position
import startup_phases  # pylint: disable=wrong-import-position


def test_phases_take_each_milestones_first_line():
  lines = [
      (1.5, 'MARK imports_done {"t": 1}'),
      (2.0, 'INFO apache_beam_dynamo.engine starting'),
      (3.0, 'INFO apache_beam_dynamo.engine again'),
      (9.25, 'Available KV cache memory: 68.4 GiB'),
      (12.0, 'MARK first_result {"t": 2}'),
  ]
  assert startup_phases.phases(lines) == {
      'imports done': 1.5, 'dynamo.vllm first log line': 2.0,
      'KV cache: memory known': 9.25, 'first result': 12.0}
  assert startup_phases.reported(lines) == {'kv_cache_gib': [68.4]}
  assert startup_phases.log_name('ours-warm+small') == 'ours-warm_small.log'


def _results(tmp_path):
  """vLLM: ready at 40 s, 4 requests of 100 tokens in 10 s of generate,
  which returns at 50 s, exit at 60 s. Ours: pipeline.run() at 10 s,
  results at 50 and 52 s (200 tokens each), the pipeline done at 55 s,
  exit at 66 s; its log is gzipped, as the results folders keep large
  logs."""
  call = tmp_path / 'call'
  call.mkdir()
  steps = {
      'vllm-warm': {'tokens': 400, 'results': 4, 'tokens_per_s': 40.0,
                    'process_wall_s': 60.0, 'prompts': 4,
                    'finished': [[44.0, 4], [45.0, 1], [46.0, 1], [47.0, 1],
                                 [48.0, 1]]},
      'ours-warm': {'tokens': 400, 'results': 4, 'prompts': 4,
                    'tokens_per_s_after_first_result': 100.0,
                    'first_result_after_pipeline_run_s': 40.0,
                    'pipeline_wall_s': 45.0, 'process_wall_s': 66.0,
                    # as computed on the device, read when the log is missing
                    'phases': {'first result': 51.0},
                    'results_t': [[50.0, 100], [50.0, 100], [52.0, 100],
                                  [52.0, 100]]},
  }
  (call / 'startup.json').write_text(json.dumps({'steps': steps}))
  (call / 'vllm-warm.log').write_text(
      '   40.000 MARK llm_loaded {"t": 1}\n'
      '   50.000 MARK generate_done {"t": 2}\n')
  with gzip.open(call / 'ours-warm.log.gz', 'wt') as f:
    f.write('    5.000 MARK imports_done {"t": 1}\n'
            '   50.000 MARK first_result {"t": 2}\n')
  (tmp_path / 'plot.json').write_text(json.dumps({
      'timeline': [['call', 'ours-warm', 'ours']],
      'tokens': [['call', 'vllm-warm', 'vLLM', '-'],
                 ['call', 'ours-warm', 'ours', '-']]}))
  return str(tmp_path)


def test_ratios_to_the_offline_engine(tmp_path):
  table = plot_gpu.ratios(_results(tmp_path)).splitlines()
  assert table[0].startswith('| run | first result (s) | / `LLM()` ready (40.0 s)')
  # vLLM's first result is its first finished request (the n == 1 updates)
  assert table[2] == ('| vLLM | 45.0 | 1.12x | 40 | 1.00x | 60.0 | 1.00x '
                      '| 50.0 | 1.00x |')
  # job done: the end of generate / of the pipeline (run at 10 s + 45 s)
  assert table[3] == ('| ours | 50.0 | 1.25x | 100 | 2.50x | 66.0 | 1.10x '
                      '| 55.0 | 1.10x |')


def test_timeline_reads_gzipped_logs_and_falls_back_to_startup_json(tmp_path):
  results = _results(tmp_path)
  assert plot_gpu.timeline(results, 'call', 'ours-warm') == {
      'imports done': 5.0, 'first result': 50.0}
  os.remove(os.path.join(results, 'call', 'ours-warm.log.gz'))
  assert plot_gpu.timeline(results, 'call', 'ours-warm') == {'first result': 51.0}
