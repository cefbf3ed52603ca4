"""apache-beam 2.77's own VLLMCompletionsModelHandler(use_dynamo=True), made
to run on Dynamo's CPU mocker so it can be measured beside ours.

Its engine command is hard-coded to ``python -m dynamo.vllm``; this swaps
that one command for ``python -m dynamo.mocker`` with the same model, and
nothing else. It also needs the offline model-name fix (NOTES.md): with no
network the frontend only lists a model whose worker serves its own model
card, which ``DYN_SYSTEM_PORT`` turns on. The benchmark sets it in the
environment of the process running this handler, which is what a user of
2.77 would have to do.
"""

import sys

from apache_beam.ml.inference import vllm_inference

_original_start_process = vllm_inference.start_process


def _mocker_start_process(cmd):
  if cmd[1:3] == ['-m', 'dynamo.vllm']:
    model = cmd[cmd.index('--model') + 1]
    extra = [
        arg for arg in cmd[3:]
        if arg not in ('--model', model, '--kv-events-config') and
        not arg.startswith('{"enable_kv_cache_events"')
    ]
    cmd = [
        sys.executable, '-m', 'dynamo.mocker', '--model-path', model,
        '--model-name', model
    ] + extra
  return _original_start_process(cmd)


vllm_inference.start_process = _mocker_start_process
VLLMCompletionsModelHandler = vllm_inference.VLLMCompletionsModelHandler
