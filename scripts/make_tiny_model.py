#!/usr/bin/env python3
"""Writes apache_beam_dynamo/tiny_model: a weightless model for the mocker.

Dynamo's mocker engine needs a model directory with config.json (with
"architectures"), tokenizer.json and tokenizer_config.json (with a chat
template), but no weights. The tokenizer is byte-level with no merges: one
token per UTF-8 byte plus three ChatML special tokens, so it is tiny,
deterministic, and token counts are easy to reason about in tests (a
prompt of N ASCII characters is N tokens).

Usage: python scripts/make_tiny_model.py [OUT_DIR]   (needs `tokenizers`)
"""

import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MAX_CONTEXT = 2048


def build_tokenizer() -> Tokenizer:
  byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {symbol: index for index, symbol in enumerate(byte_symbols)}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
      add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens(SPECIAL_TOKENS)
  return tokenizer


def write_json(path: str, data: dict) -> None:
  with open(path, 'w') as f:
    json.dump(data, f, indent=1, sort_keys=True)
    f.write('\n')


def main(out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = build_tokenizer()
  tokenizer.save(os.path.join(out_dir, 'tokenizer.json'))
  bos, eos = (tokenizer.token_to_id(t) for t in ('<|endoftext|>', '<|im_end|>'))
  write_json(
      os.path.join(out_dir, 'tokenizer_config.json'), {
          'tokenizer_class': 'PreTrainedTokenizerFast',
          'bos_token': '<|endoftext|>',
          'eos_token': '<|im_end|>',
          'pad_token': '<|endoftext|>',
          'model_max_length': MAX_CONTEXT,
          'chat_template': CHAT_TEMPLATE,
      })
  # A Qwen3-shaped config; the mocker reads the architecture and vocabulary,
  # never any weights.
  write_json(
      os.path.join(out_dir, 'config.json'), {
          'architectures': ['Qwen3ForCausalLM'],
          'model_type': 'qwen3',
          'vocab_size': tokenizer.get_vocab_size(),
          'hidden_size': 64,
          'intermediate_size': 128,
          'num_hidden_layers': 2,
          'num_attention_heads': 4,
          'num_key_value_heads': 2,
          'head_dim': 16,
          'max_position_embeddings': MAX_CONTEXT,
          'bos_token_id': bos,
          'eos_token_id': eos,
          'pad_token_id': bos,
          'tie_word_embeddings': True,
          'torch_dtype': 'bfloat16',
      })
  write_json(
      os.path.join(out_dir, 'generation_config.json'), {
          'bos_token_id': bos, 'eos_token_id': eos, 'pad_token_id': bos
      })


if __name__ == '__main__':
  main(
      sys.argv[1] if len(sys.argv) > 1 else os.path.join(
          os.path.dirname(__file__), '..', 'apache_beam_dynamo', 'tiny_model'))
