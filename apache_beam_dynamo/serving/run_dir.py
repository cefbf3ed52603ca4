"""The stack's private run directory (mode 0700): the chat template, and
for the mocker, which has no template flag, a shadow model directory whose
tokenizer config carries that template."""

import json
import os

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.serving.placement import Placement


def write_private(path: str, text: str) -> None:
  """Creates ``path`` (owner-only, must not exist) holding ``text``."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, 'w') as f:
    f.write(text)


def prepare(config: StackConfig, placement: Placement) -> None:
  """Writes the files the stack's command lines refer to."""
  if not config.chat_template:
    return
  write_private(placement.chat_template_file, config.chat_template)
  if config.use_dynamo and config.engine == 'mocker':
    _shadow_model_dir(config, placement.mocker_model_dir)


def _shadow_model_dir(config: StackConfig, target: str) -> None:
  os.mkdir(target, 0o700)
  for name in os.listdir(config.model):
    if name not in ('tokenizer_config.json', 'chat_template.jinja'):
      os.symlink(
          os.path.join(os.path.abspath(config.model), name),
          os.path.join(target, name))
  with open(os.path.join(config.model, 'tokenizer_config.json')) as f:
    tokenizer_config = json.load(f)
  tokenizer_config['chat_template'] = config.chat_template
  write_private(
      os.path.join(target, 'tokenizer_config.json'),
      json.dumps(tokenizer_config, indent=1))
  write_private(os.path.join(target, 'chat_template.jinja'), config.chat_template)
