"""test-suites/dataflow/run.py without GCP: the Dataflow flags for a T4 and
an L4 worker, --dry_run, the launch-and-check flow against a fake job, and
the output checker on sample JSONL."""

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import (
    DebugOptions, GoogleCloudOptions, PipelineOptions, SetupOptions,
    StandardOptions, WorkerOptions)
from openai.types import Completion, CompletionChoice, CompletionUsage

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


run = _load('dataflow_run', HERE / 'run.py')
example = _load('vllm_text_completion_example', run.EXAMPLE)

REQUIRED = [
    '--project=proj', '--region=us-central1', '--bucket=gs://bkt/',
    '--image=us-docker.pkg.dev/proj/repo/worker:1', '--run_id=r1'
]
MODEL = 'Qwen/Qwen3-0.6B'


def command_for(gpu: str, *more: str) -> list[str]:
  args, extra = run.parse_args([*REQUIRED, f'--gpu={gpu}', *more])
  return run.example_command(args, extra)


@pytest.mark.parametrize('gpu, machine, accelerator, disk', [
    ('t4', 'n1-standard-8', 'nvidia-tesla-t4', 100),
    ('l4', 'g2-standard-8', 'nvidia-l4', 100),
])
def test_dataflow_flags_per_gpu(gpu, machine, accelerator, disk):
  args, _ = run.parse_args([*REQUIRED, f'--gpu={gpu}'])
  assert run.dataflow_flags(args) == [
      '--runner=DataflowRunner',
      '--project=proj',
      '--region=us-central1',
      f'--job_name=apache-beam-dynamo-{gpu}-r1',
      f'--temp_location=gs://bkt/apache-beam-dynamo-dataflow/{gpu}-r1/tmp',
      '--sdk_container_image=us-docker.pkg.dev/proj/repo/worker:1',
      '--sdk_location=container',
      f'--machine_type={machine}',
      f'--disk_size_gb={disk}',
      ('--dataflow_service_options=worker_accelerator='
       f'type:{accelerator};count:1;install-nvidia-driver'),
      '--dataflow_service_options=max_workflow_runtime_walltime_seconds=3600',
      '--experiments=use_runner_v2',
      '--experiments=no_use_multiple_sdk_containers',
      '--num_workers=1',
      '--max_num_workers=1',
      '--autoscaling_algorithm=NONE',
  ]


def test_driver_and_runtime_limit_are_options():
  command = command_for('l4', '--nvidia_driver=install-nvidia-driver:5xx',
                        '--max_runtime_s=900')
  assert ('--dataflow_service_options=worker_accelerator=type:nvidia-l4;'
          'count:1;install-nvidia-driver:5xx') in command
  assert ('--dataflow_service_options='
          'max_workflow_runtime_walltime_seconds=900') in command


@pytest.mark.parametrize('gpu', sorted(run.GPU_WORKERS))
def test_command_is_what_the_example_and_beam_understand(gpu):
  command = command_for(gpu, '--subnetwork=regions/us-central1/subnetworks/s')
  assert command[:2] == [sys.executable, str(run.EXAMPLE)]
  known, pipeline_args = example.parse_known_args(command[2:])
  assert known.use_dynamo and known.engine == 'vllm'
  assert known.model == MODEL
  assert known.input == f'gs://bkt/apache-beam-dynamo-dataflow/{gpu}-r1/prompts.jsonl'
  assert known.output == f'gs://bkt/apache-beam-dynamo-dataflow/{gpu}-r1/results.jsonl'
  assert (known.max_tokens, known.temperature) == (32, 0.0)

  options = PipelineOptions(pipeline_args)
  # Every flag is a Beam option (none would be dropped as unparseable).
  assert (options.get_all_options(retain_unknown_options=True).keys() ==
          options.get_all_options().keys())
  worker = run.GPU_WORKERS[gpu]
  cloud = options.view_as(GoogleCloudOptions)
  assert (cloud.project, cloud.region) == ('proj', 'us-central1')
  assert cloud.dataflow_service_options == [
      (f'worker_accelerator=type:{worker.accelerator};count:1;'
       'install-nvidia-driver'),
      'max_workflow_runtime_walltime_seconds=3600',
  ]
  workers = options.view_as(WorkerOptions)
  assert workers.machine_type == worker.machine_type
  assert workers.disk_size_gb == worker.disk_size_gb
  assert workers.sdk_container_image == 'us-docker.pkg.dev/proj/repo/worker:1'
  assert (workers.num_workers, workers.max_num_workers) == (1, 1)
  assert workers.subnetwork == 'regions/us-central1/subnetworks/s'
  assert set(options.view_as(DebugOptions).experiments) == {
      'use_runner_v2', 'no_use_multiple_sdk_containers'
  }
  assert options.view_as(SetupOptions).sdk_location == 'container'
  assert options.view_as(StandardOptions).runner == 'DataflowRunner'


def test_dry_run_prints_the_command_and_touches_nothing(monkeypatch, capsys):
  def forbidden(*args, **kwargs):
    raise AssertionError('a dry run must not run or write anything')

  monkeypatch.setattr(run.subprocess, 'run', forbidden)
  monkeypatch.setattr(run, 'write_text', forbidden)
  assert run.main([*REQUIRED, '--gpu=t4', '--dry_run']) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith('# would write 100 prompts to gs://bkt/')
  assert shlex.split(printed[1]) == command_for('t4')


def test_dry_run_from_the_command_line():
  result = subprocess.run(
      [sys.executable, str(HERE / 'run.py'), *REQUIRED, '--gpu=l4', '--dry_run'],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert ("'--dataflow_service_options=worker_accelerator=type:nvidia-l4;"
          "count:1;install-nvidia-driver'") in result.stdout
  assert '--machine_type=g2-standard-8' in result.stdout


def test_paths_and_job_name():
  args, _ = run.parse_args([*REQUIRED, '--gpu=t4', '--run_id=2026_Nov'])
  paths = run.run_paths(args)
  assert paths.results == (
      'gs://bkt/apache-beam-dynamo-dataflow/t4-2026_Nov/results.jsonl')
  assert paths.dead_letters == paths.results + '.dead_letter'
  assert run.job_name(args) == 'apache-beam-dynamo-t4-2026-nov'


# The output checker, on sample JSONL.


def record(prompt, completion_tokens=32, finish_reason='length', **changes):
  fields = dict(
      input=prompt, text=' some text', finish_reason=finish_reason,
      prompt_tokens=12, completion_tokens=completion_tokens, model=MODEL)
  fields.update(changes)
  return json.dumps(fields)


PROMPTS = run.make_prompts(3)


def check(lines, dead=(), **kwargs):
  return run.check_output(
      PROMPTS, lines, dead, max_tokens=32, model=MODEL, **kwargs)


def test_checker_passes_one_good_record_per_prompt():
  lines = [record(PROMPTS[2]), record(PROMPTS[0], 7, 'stop'),
           '', record(PROMPTS[1])]
  assert check(lines) == []
  assert run.summarize(lines) == (
      "3 results, 36 prompt tokens, 71 completion tokens, "
      "finish reasons {'length': 2, 'stop': 1}")


def test_checker_finds_missing_duplicate_and_unknown_inputs():
  problems = check([record(PROMPTS[0]), record(PROMPTS[0]),
                    record(PROMPTS[1]), record('not a prompt')])
  assert problems == [
      f'no result for input {json.dumps(PROMPTS[2])}',
      f'1 result(s) too many for input {json.dumps(PROMPTS[0])}',
      '1 result(s) too many for input "not a prompt"',
  ]


@pytest.mark.parametrize('changes, problem', [
    (dict(completion_tokens=0), 'completion_tokens 0, expected 1..32'),
    (dict(completion_tokens=33), 'completion_tokens 33, expected 1..32'),
    (dict(completion_tokens=None), 'completion_tokens None, expected 1..32'),
    (dict(completion_tokens=True), 'completion_tokens True, expected 1..32'),
    (dict(prompt_tokens=0), 'prompt_tokens 0, expected >= 1'),
    (dict(prompt_tokens=None), 'prompt_tokens None, expected >= 1'),
    (dict(finish_reason='abort'), "finish_reason 'abort', expected stop or length"),
    (dict(completion_tokens=5),
     'finish_reason length with 5 completion tokens, expected max_tokens=32'),
    (dict(model='other'), "model 'other', expected 'Qwen/Qwen3-0.6B'"),
    (dict(text=None), 'text is not a string: None'),
])
def test_checker_finds_bad_records(changes, problem):
  lines = [record(p) for p in PROMPTS[1:]] + [record(PROMPTS[0], **changes)]
  assert check(lines) == [f'result line 3: {problem}']


def test_checker_finds_malformed_lines_and_dead_letters():
  lines = [record(PROMPTS[0]), '{"input": "x"', '{"input": "y"}',
           record(PROMPTS[1]), record(PROMPTS[2])]
  dead = ['{"input": "z", "stage": "request", "error": "HTTP 400"}', '']
  problems = check(lines, dead)
  assert problems[0].startswith('result line 2: not JSON')
  assert problems[1].startswith('result line 3: fields are not')
  assert problems[2:] == [
      'dead letter 1: {"input": "z", "stage": "request", "error": "HTTP 400"}'
  ]


def test_checker_wants_some_text_unless_told_otherwise():
  lines = [record(p, text='') for p in PROMPTS]
  assert check(lines) == ['every result has empty text']
  assert check(lines, require_text=False) == []  # Dynamo's mocker


def test_checker_reads_what_the_example_writes():
  """Records from the example's own FormatResult pass the checker."""
  def completion(tokens, reason):
    return Completion(
        id='c', created=0, model=MODEL, object='text_completion',
        choices=[CompletionChoice(
            index=0, text=' fine', finish_reason=reason, logprobs=None)],
        usage=CompletionUsage(
            prompt_tokens=9, completion_tokens=tokens, total_tokens=9 + tokens))

  format_result = example.FormatResult()
  lines = []
  for i, prompt in enumerate(PROMPTS):
    inference = completion(32, 'length') if i else completion(4, 'stop')
    lines.extend(format_result.process(PredictionResult(prompt, inference, MODEL)))
  assert check(lines) == []


# main() end to end, with local paths for GCS and a fake job.


def fake_job(monkeypatch, tmp_path, make_lines, dead=()):
  paths = run.RunPaths(str(tmp_path / 'run'))
  monkeypatch.setattr(run, 'run_paths', lambda args: paths)
  launched = []

  def job(command, check):
    launched.append(command)
    prompts = [json.loads(l)['prompt'] for l in run.read_lines(paths.prompts)]
    run.write_text(paths.results, ''.join(l + '\n' for l in make_lines(prompts)))
    run.write_text(paths.dead_letters, ''.join(l + '\n' for l in dead))
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(run.subprocess, 'run', job)
  return launched


def test_main_launches_reads_and_passes(monkeypatch, tmp_path, capsys):
  launched = fake_job(monkeypatch, tmp_path,
                      lambda prompts: [record(p) for p in prompts])
  assert run.main([*REQUIRED, '--gpu=t4', '--num_prompts=5']) == 0
  assert len(launched) == 1 and '--machine_type=n1-standard-8' in launched[0]
  out = capsys.readouterr().out
  assert '5 results, 60 prompt tokens, 160 completion tokens' in out
  assert out.rstrip().endswith('PASS')


def test_main_fails_on_a_dead_letter(monkeypatch, tmp_path, capsys):
  fake_job(monkeypatch, tmp_path,
           lambda prompts: [record(p) for p in prompts[1:]],
           dead=['{"input": "q", "stage": "request", "error": "boom"}'])
  assert run.main([*REQUIRED, '--gpu=l4', '--num_prompts=2']) == 1
  captured = capsys.readouterr()
  assert 'FAIL: no result for input' in captured.err
  assert 'FAIL: dead letter 1:' in captured.err
  assert captured.out.rstrip().endswith('FAIL: 2 problem(s)')


def test_main_fails_when_the_job_fails(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(run, 'run_paths',
                      lambda args: run.RunPaths(str(tmp_path / 'run')))
  monkeypatch.setattr(run.subprocess, 'run',
                      lambda command, check: subprocess.CompletedProcess(command, 3))
  assert run.main([*REQUIRED, '--gpu=t4', '--num_prompts=1']) == 1
  assert 'the example exited with 3' in capsys.readouterr().err


def test_local_read_and_write(tmp_path):
  path = str(tmp_path / 'sub' / 'f.jsonl')
  assert run.read_lines(path) is None
  run.write_text(path, run.prompts_jsonl(['a', 'b "c"']))
  assert [json.loads(l)['prompt'] for l in run.read_lines(path)] == ['a', 'b "c"']
