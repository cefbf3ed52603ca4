"""The example CLI, as the README runs it, on the mocker engine."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLE = os.path.join(REPO, 'examples', 'vllm_text_completion.py')
INPUT_LINES = [
    'Hello there',
    '',
    '{"prompt": "json prompt"}',
    '{"messages": [{"role": "user", "content": "hi"}]}',
    '{"bad json',
    '{"neither": 1}',
    'last line',
]


def run_example(*args):
  return subprocess.run([sys.executable, EXAMPLE, *args],
                        capture_output=True,
                        text=True,
                        timeout=180,
                        cwd=REPO)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def input_file(tmp_path):
  path = tmp_path / 'prompts.txt'
  path.write_text('\n'.join(INPUT_LINES) + '\n')
  return str(path)


@pytest.mark.parametrize('chat, good, bad', [
    (False, ['Hello there', 'json prompt', 'last line'], 3),
    (True, ['Hello there', 'json prompt', 'hi', 'last line'], 2),
])
def test_results_and_dead_letters(input_file, tmp_path, chat, good, bad,
                                  no_leftovers):
  output = str(tmp_path / 'out' / 'results.jsonl')
  finished = run_example(
      '--use_dynamo', '--engine', 'mocker', '--input', input_file, '--output',
      output, '--max_tokens', '5', *(['--chat'] if chat else []))
  assert finished.returncode == 0, finished.stderr[-3000:]
  results = read_jsonl(output)
  inputs = [r['input'] if isinstance(r['input'], str) else r['input'][-1]['content']
            for r in results]
  assert sorted(inputs) == sorted(good)
  for record in results:
    assert record['completion_tokens'] == 5
    assert record['finish_reason'] == 'length'
    assert record['prompt_tokens'] > 0
    assert record['model'] == 'tiny_model'
  dead = read_jsonl(output + '.dead_letter')
  assert len(dead) == bad
  assert all(d['stage'] == 'input' and d['error'] for d in dead)
  assert f'{len(good)} results, {bad} failed' in finished.stdout
  assert f'Results: {output}' in finished.stdout


def test_help_documents_every_flag():
  finished = run_example('--help')
  assert finished.returncode == 0
  for flag in ('--model', '--input', '--output', '--chat', '--chat_template',
               '--use_dynamo', '--engine', '--max_tokens', '--temperature',
               '--vllm_max_num_seqs', '--vllm_gpu_memory_utilization',
               '--tensor_parallel_size', '--router_mode', '--engine_arg',
               '--log_level'):
    assert flag in finished.stdout
  assert 'DataflowRunner' in finished.stdout


def test_quiet_by_default_and_the_stack_at_debug_on_request(tmp_path,
                                                           no_leftovers):
  output = str(tmp_path / 'out' / 'results.jsonl')
  quiet = run_example('--use_dynamo', '--engine', 'mocker', '--output', output)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  lines = (quiet.stdout + quiet.stderr).splitlines()
  # Where results went, the summary, warnings: no INFO chatter.
  assert len(lines) <= 15, lines
  assert not [line for line in lines if line.startswith(('INFO', 'DEBUG'))]
  assert '5 results, 0 failed' in quiet.stdout

  loud = run_example('--use_dynamo', '--engine', 'mocker', '--output', output,
                     '--log_level', 'DEBUG')
  assert loud.returncode == 0, loud.stderr[-3000:]
  # The children's INFO lines, at DEBUG, under their component's logger.
  for component in ('frontend', 'engine'):
    assert re.search(
        rf'^DEBUG apache_beam_dynamo\.{component}: .*\bINFO\b', loud.stderr,
        re.M), component


def test_mocker_without_dynamo_is_a_clear_error(tmp_path):
  finished = run_example('--engine', 'mocker', '--output',
                         str(tmp_path / 'o.jsonl'))
  assert finished.returncode != 0
  assert 'needs use_dynamo=True' in finished.stderr


@pytest.mark.parametrize('chat', [False, True])
def test_jsonl_records_carry_their_own_request_parameters(tmp_path, chat,
                                                          no_leftovers):
  records = [
      {'prompt': 'a', 'max_tokens': 2},
      {'prompt': 'b'},
      {'prompt': 'c', 'max_tokens': 7, 'temperature': 0},
      {'prompt': 'd', 'max_tokenz': 3},
      {'prompt': 'e', 'max_tokens': '3'},
  ]
  path = tmp_path / 'rows.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  output = str(tmp_path / 'out' / 'results.jsonl')
  finished = run_example(
      '--use_dynamo', '--engine', 'mocker', '--input', str(path), '--output',
      output, '--max_tokens', '5', *(['--chat'] if chat else []))
  assert finished.returncode == 0, finished.stderr[-3000:]

  def prompt(record):
    given = record['input']
    return given if isinstance(given, str) else given[-1]['content']

  tokens = {prompt(r): r['completion_tokens'] for r in read_jsonl(output)}
  assert tokens == {'a': 2, 'b': 5, 'c': 7}
  dead = {prompt(d): d for d in read_jsonl(output + '.dead_letter')}
  assert sorted(dead) == ['d', 'e']
  assert dead['d']['stage'] == 'request'
  assert "'max_tokenz'" in dead['d']['error']
  assert dead['d']['parameters'] == {'max_tokenz': 3}
  assert "element['max_tokens'] must be int" in dead['e']['error']
  assert '3 results, 2 failed' in finished.stdout
