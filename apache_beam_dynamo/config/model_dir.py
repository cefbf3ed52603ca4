"""What a local model directory must hold, checked when the pipeline is
built where the directory is visible (the mocker's; vLLM's may exist only
on the workers)."""

import json
import os

from apache_beam_dynamo.errors import ConfigError


def looks_like_local_path(model: str) -> bool:
  return model.startswith(('/', '.', '~')) or os.path.exists(model)


def check_mocker_model_dir(path: str) -> None:
  """The mocker needs config and tokenizer files (no weights): a local model
  directory, or a hub id already in the local Hugging Face cache."""
  if not looks_like_local_path(path):
    return
  if not os.path.isdir(path):
    raise ConfigError(
        f'Model directory {path!r} does not exist. engine="mocker" needs a '
        'directory holding config.json, tokenizer.json and '
        'tokenizer_config.json, e.g. apache_beam_dynamo.TINY_MODEL_DIR.')
  missing = [
      name for name in ('config.json', 'tokenizer.json', 'tokenizer_config.json')
      if not os.path.isfile(os.path.join(path, name))
  ]
  if missing:
    raise ConfigError(
        f'Model directory {path!r} lacks {", ".join(missing)}; the Dynamo '
        'frontend needs the tokenizer and config files to serve it.')
  try:
    with open(os.path.join(path, 'config.json')) as f:
      architectures = json.load(f).get('architectures')
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path}/config.json is not readable JSON: {e}') from e
  if not architectures:
    raise ConfigError(
        f'{path}/config.json has no "architectures" list; the Dynamo frontend '
        'rejects such a model ("missing field architectures"). Add e.g. '
        '"architectures": ["Qwen3ForCausalLM"].')
