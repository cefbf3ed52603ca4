#!/usr/bin/env python3
"""Runs examples/vllm_text_completion.py on Dataflow with one T4 or one L4
worker, then checks what it wrote.

  python test-suites/dataflow/run.py --project P --region R --bucket B \\
      --image REGION-docker.pkg.dev/P/REPO/apache-beam-dynamo:TAG --gpu t4

Steps: write --num_prompts distinct prompts to
gs://B/apache-beam-dynamo-dataflow/<gpu>-<run_id>/prompts.jsonl, run the
example there (DataflowRunner, the worker image, one GPU worker, greedy
decoding), then read results.jsonl and results.jsonl.dead_letter and check
one result per prompt with sane token counts. Exit status 0 only if all
checks pass. --dry_run prints the example's command line and touches
nothing.

Needs: Dataflow and GPU quota in the region, the bucket, the worker image
built from docker/Dockerfile (docker/README.md), and here this package and
apache-beam[gcp] at the image's Beam and Python versions, with credentials
(gcloud auth application-default login). Unknown flags are passed on to the
example, e.g. --subnetwork, --service_account_email, --no_use_public_ips
(then the workers need another way to fetch the model: see
docker/README.md).
"""

import argparse
import collections
import dataclasses
import datetime
import json
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / 'examples' / 'vllm_text_completion.py'
PREFIX = 'apache-beam-dynamo-dataflow'
RESULT_FIELDS = ('input', 'text', 'finish_reason', 'prompt_tokens',
                 'completion_tokens', 'model')


@dataclasses.dataclass(frozen=True)
class GpuWorker:
  machine_type: str
  accelerator: str
  disk_size_gb: int


# One GPU per worker. disk_size_gb: the worker image is large (torch, vLLM
# and the CUDA 13 wheels, docker/README.md) and Dataflow's default boot disk
# for batch jobs on Dataflow Shuffle is 25 GB; pulling needs the compressed
# layers and the unpacked image at once, plus the model cache.
GPU_WORKERS = {
    # 4 vCPUs per GPU would do; 8 gives the SDK harness and the engine room.
    't4': GpuWorker('n1-standard-8', 'nvidia-tesla-t4', 100),
    # G2 is the machine family that carries L4s; g2-standard-8 has one.
    'l4': GpuWorker('g2-standard-8', 'nvidia-l4', 100),
}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      epilog='Other flags go to the example (and on to Beam).')
  parser.add_argument('--project', required=True)
  parser.add_argument('--region', required=True)
  parser.add_argument(
      '--bucket', required=True, help='GCS bucket (with or without gs://).')
  parser.add_argument(
      '--image', required=True, help='Worker image (docker/Dockerfile).')
  parser.add_argument('--gpu', required=True, choices=sorted(GPU_WORKERS))
  parser.add_argument('--model', default='Qwen/Qwen3-0.6B')
  parser.add_argument('--num_prompts', type=int, default=100)
  parser.add_argument('--max_tokens', type=int, default=32)
  parser.add_argument(
      '--nvidia_driver',
      default='install-nvidia-driver',
      help='Driver part of worker_accelerator, e.g. install-nvidia-driver:5xx '
      '(the image needs an R580+ driver: docker/README.md).')
  parser.add_argument(
      '--max_runtime_s',
      type=int,
      default=3600,
      help='Dataflow cancels the job after this (GPU cost bound).')
  parser.add_argument(
      '--run_id',
      default=datetime.datetime.now(
          datetime.timezone.utc).strftime('%Y%m%d-%H%M%S'),
      help='Names the job and the GCS folder. Default: UTC time.')
  parser.add_argument(
      '--dry_run',
      action='store_true',
      help='Print the example command line; run and write nothing.')
  args, extra = parser.parse_known_args(argv)
  if args.num_prompts < 1 or args.max_tokens < 1:
    parser.error('--num_prompts and --max_tokens must be positive')
  args.bucket = args.bucket.removeprefix('gs://').strip('/')
  return args, extra


@dataclasses.dataclass(frozen=True)
class RunPaths:
  prefix: str

  @property
  def prompts(self) -> str:
    return f'{self.prefix}/prompts.jsonl'

  @property
  def results(self) -> str:
    return f'{self.prefix}/results.jsonl'

  @property
  def dead_letters(self) -> str:
    return self.results + '.dead_letter'  # the example's naming

  @property
  def temp(self) -> str:
    return f'{self.prefix}/tmp'


def run_paths(args: argparse.Namespace) -> RunPaths:
  return RunPaths(f'gs://{args.bucket}/{PREFIX}/{args.gpu}-{args.run_id}')


def job_name(args: argparse.Namespace) -> str:
  """Dataflow job names: lower case, digits and dashes."""
  return f'apache-beam-dynamo-{args.gpu}-{args.run_id}'.lower().replace('_', '-')


def dataflow_flags(args: argparse.Namespace) -> list[str]:
  """The Beam options that put the job on one GPU worker of the image."""
  worker = GPU_WORKERS[args.gpu]
  paths = run_paths(args)
  return [
      '--runner=DataflowRunner',
      f'--project={args.project}',
      f'--region={args.region}',
      f'--job_name={job_name(args)}',
      f'--temp_location={paths.temp}',
      f'--sdk_container_image={args.image}',
      # Use the Beam SDK installed in the image; staging one would reinstall
      # it on every worker start.
      '--sdk_location=container',
      f'--machine_type={worker.machine_type}',
      f'--disk_size_gb={worker.disk_size_gb}',
      ('--dataflow_service_options=worker_accelerator='
       f'type:{worker.accelerator};count:1;{args.nvidia_driver}'),
      ('--dataflow_service_options=max_workflow_runtime_walltime_seconds='
       f'{args.max_runtime_s}'),
      '--experiments=use_runner_v2',
      # One SDK container per worker: its processes share one stack (and
      # the one GPU) instead of starting one each.
      '--experiments=no_use_multiple_sdk_containers',
      '--num_workers=1',
      '--max_num_workers=1',
      '--autoscaling_algorithm=NONE',
  ]


def example_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
  paths = run_paths(args)
  return [
      sys.executable,
      str(EXAMPLE),
      '--use_dynamo',
      f'--model={args.model}',
      f'--input={paths.prompts}',
      f'--output={paths.results}',
      f'--max_tokens={args.max_tokens}',
      '--temperature=0',  # greedy: repeatable, no top-k/top-p sampling
      *dataflow_flags(args),
      *extra,
  ]


def make_prompts(count: int) -> list[str]:
  """Distinct prompts, so that each result maps back to one input."""
  return [
      f'Question {i}: in one sentence, what is special about the number {i}?'
      for i in range(count)
  ]


def prompts_jsonl(prompts: Iterable[str]) -> str:
  return ''.join(json.dumps({'prompt': p}) + '\n' for p in prompts)


def check_output(prompts: Sequence[str],
                 result_lines: Iterable[str],
                 dead_letter_lines: Iterable[str],
                 *,
                 max_tokens: int,
                 model: str,
                 require_text: bool = True) -> list[str]:
  """What is wrong with a run's output; an empty list when nothing is.

  Expects exactly one result record per prompt and no dead letter; each
  record as the example writes it, from ``model``, with a positive prompt
  token count and 1..max_tokens completion tokens (exactly max_tokens when
  cut at the limit). ``require_text``: at least one record has text (a GPU
  engine writes some; Dynamo's mocker writes none).
  """
  problems = []
  seen: collections.Counter = collections.Counter()
  any_text = False
  for number, line in enumerate(result_lines, start=1):
    if not line.strip():
      continue
    where = f'result line {number}'
    try:
      record = json.loads(line)
    except ValueError as e:
      problems.append(f'{where}: not JSON ({e})')
      continue
    if not isinstance(record, dict) or set(record) != set(RESULT_FIELDS):
      problems.append(f'{where}: fields are not {RESULT_FIELDS}: {line[:200]}')
      continue
    seen[json.dumps(record['input'])] += 1
    problems.extend(
        f'{where}: {p}' for p in _record_problems(record, max_tokens, model))
    any_text = any_text or (isinstance(record['text'], str) and
                            bool(record['text'].strip()))
  expected = collections.Counter(json.dumps(p) for p in prompts)
  for key in sorted(expected - seen):
    problems.append(f'no result for input {key}')
  for key in sorted(seen - expected):
    count = seen[key] - expected[key]
    problems.append(f'{count} result(s) too many for input {key}')
  for number, line in enumerate(dead_letter_lines, start=1):
    if line.strip():
      problems.append(f'dead letter {number}: {line.strip()[:300]}')
  if require_text and sum(seen.values()) and not any_text:
    problems.append('every result has empty text')
  return problems


def _record_problems(record: dict, max_tokens: int, model: str) -> list[str]:
  problems = []
  if record['model'] != model:
    problems.append(f'model {record["model"]!r}, expected {model!r}')
  if not isinstance(record['text'], str):
    problems.append(f'text is not a string: {record["text"]!r}')
  prompt_tokens = record['prompt_tokens']
  if not _is_int(prompt_tokens) or prompt_tokens < 1:
    problems.append(f'prompt_tokens {prompt_tokens!r}, expected >= 1')
  completion = record['completion_tokens']
  completion_ok = _is_int(completion) and 1 <= completion <= max_tokens
  if not completion_ok:
    problems.append(
        f'completion_tokens {completion!r}, expected 1..{max_tokens}')
  reason = record['finish_reason']
  if reason not in ('stop', 'length'):
    problems.append(f'finish_reason {reason!r}, expected stop or length')
  elif reason == 'length' and completion_ok and completion != max_tokens:
    problems.append(
        f'finish_reason length with {completion!r} completion tokens, '
        f'expected max_tokens={max_tokens}')
  return problems


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def summarize(result_lines: Iterable[str]) -> str:
  records = [json.loads(line) for line in result_lines if line.strip()]
  prompt = sum(r.get('prompt_tokens') or 0 for r in records)
  completion = sum(r.get('completion_tokens') or 0 for r in records)
  reasons = collections.Counter(r.get('finish_reason') for r in records)
  return (f'{len(records)} results, {prompt} prompt tokens, {completion} '
          f'completion tokens, finish reasons {dict(reasons)}')


def write_text(path: str, text: str) -> None:
  from apache_beam.io.filesystems import FileSystems  # GCS needs [gcp]
  with FileSystems.create(path) as f:
    f.write(text.encode('utf-8'))


def read_lines(path: str) -> list[str] | None:
  """The file's lines, or None if it does not exist."""
  from apache_beam.io.filesystems import FileSystems
  if not FileSystems.exists(path):
    return None
  with FileSystems.open(path) as f:
    return f.read().decode('utf-8').splitlines()


def main(argv: Sequence[str]) -> int:
  args, extra = parse_args(argv)
  command = example_command(args, extra)
  paths = run_paths(args)
  if args.dry_run:
    print(f'# would write {args.num_prompts} prompts to {paths.prompts}, then run:')
    print(shlex.join(command))
    return 0

  prompts = make_prompts(args.num_prompts)
  write_text(paths.prompts, prompts_jsonl(prompts))
  print(f'{len(prompts)} prompts in {paths.prompts}; launching {job_name(args)}',
        flush=True)
  launched = subprocess.run(command, check=False)
  if launched.returncode != 0:
    print(f'FAIL: the example exited with {launched.returncode}; see the job '
          f'{job_name(args)} in the Dataflow console', file=sys.stderr)
    return 1

  results = read_lines(paths.results)
  if results is None:
    print(f'FAIL: no {paths.results}', file=sys.stderr)
    return 1
  dead_letters = read_lines(paths.dead_letters) or []
  problems = check_output(
      prompts, results, dead_letters, max_tokens=args.max_tokens,
      model=args.model)
  print(summarize(results))
  for problem in problems[:50]:
    print(f'FAIL: {problem}', file=sys.stderr)
  if len(problems) > 50:
    print(f'FAIL: ... and {len(problems) - 50} more', file=sys.stderr)
  print('PASS' if not problems else f'FAIL: {len(problems)} problem(s)')
  return 0 if not problems else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
