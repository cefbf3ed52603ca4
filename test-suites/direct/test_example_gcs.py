"""The example CLI with every path on gs://: input, chat template and output.

GCS is a local emulator (conftest's ``gcs`` fixture); Beam's own GCS
filesystem talks to it, so this exercises the package's ``apache-beam[gcp]``
install with no Google Cloud access.
"""

import json
import os
import subprocess
import sys

from apache_beam.io.filesystems import FileSystems
from gcs_emulator import GCS_BUCKET as BUCKET
from gcs_emulator import write_gcs

SUITES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(SUITES)
EXAMPLE = os.path.join(REPO, 'examples', 'vllm_text_completion.py')
# A template whose preamble alone is more tokens than any prompt here with
# the tiny model's own template (its tokenizer: one token per byte), so the
# prompt token counts show which template the engine used.
PREAMBLE = 'gs-template ' * 40
TEMPLATE = (PREAMBLE + "{% for m in messages %}{{ m['role'] }}: "
            "{{ m['content'] }}\n{% endfor %}")
INPUT_LINES = [
    'Hello there',
    '{"prompt": "json prompt"}',
    '{"messages": [{"role": "user", "content": "hi"}]}',
    '{"bad json',
]
GOOD = ['Hello there', 'json prompt', 'hi']


def read_gcs_jsonl(path: str) -> list:
  with FileSystems.open(path) as f:
    return [json.loads(line) for line in f.read().decode().splitlines()
            if line.strip()]


def test_input_template_and_output_on_gcs(gcs, no_leftovers):
  base = f'gs://{BUCKET}/example'
  write_gcs(f'{base}/in/prompts.txt', '\n'.join(INPUT_LINES) + '\n')
  write_gcs(f'{base}/template.jinja', TEMPLATE)
  output = f'{base}/out/results.jsonl'
  assert not FileSystems.exists(output)

  finished = subprocess.run([
      sys.executable, EXAMPLE, '--use_dynamo', '--engine', 'mocker', '--chat',
      '--input', f'{base}/in/*.txt', '--chat_template',
      f'{base}/template.jinja', '--output', output, '--max_tokens', '3'
  ],
                            capture_output=True,
                            text=True,
                            timeout=300,
                            cwd=REPO,
                            env=gcs)
  assert finished.returncode == 0, finished.stderr[-3000:]

  results = read_gcs_jsonl(output)
  assert sorted(r['input'][-1]['content'] for r in results) == sorted(GOOD)
  for record in results:
    assert record['finish_reason'] == 'length'
    assert record['completion_tokens'] == 3
    # The gs:// template's preamble reached the engine.
    assert record['prompt_tokens'] > len(PREAMBLE), record
  dead = read_gcs_jsonl(output + '.dead_letter')
  assert [(d['input'], d['stage']) for d in dead] == [('{"bad json', 'input')]
  assert f'{len(GOOD)} results, 1 failed' in finished.stdout
  assert f'Results: {output}' in finished.stdout
