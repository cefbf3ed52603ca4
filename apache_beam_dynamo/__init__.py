"""LLM batch inference in Apache Beam on an embedded NVIDIA Dynamo stack.

``from apache_beam_dynamo import VLLMCompletionsModelHandler`` is a drop-in
replacement for apache-beam's ``vllm_inference`` handlers. The handlers are
imported lazily so that the stack's helper programs
(``python -m apache_beam_dynamo.runtime.supervisor`` / ``.reaper``) start without
importing Beam.
"""

import importlib
import os

__version__ = '0.1.0'

TINY_MODEL_DIR = os.path.join(os.path.dirname(__file__), 'tiny_model')
"""A weightless model directory (tokenizer, config, chat template) for
``engine="mocker"``: demos, tests and benchmarks without a GPU."""

_LAZY = {
    'OpenAIChatMessage': 'apache_beam_dynamo.beam.requests',
    'VLLMChatModelHandler': 'apache_beam_dynamo.beam.handlers',
    'VLLMCompletionsModelHandler': 'apache_beam_dynamo.beam.handlers',
    'raise_failed_element': 'apache_beam_dynamo.beam.handlers',
}

__all__ = ['TINY_MODEL_DIR', '__version__', *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
