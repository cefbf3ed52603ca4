"""Prompts for the prefix benchmark (issue 16): shared prefixes and a control.

    shared   32 prefixes of ~1,000 tokens (a "document" or few-shot block),
             100 short questions after each: 3,200 prompts, shuffled with a
             fixed seed, so same-prefix prompts are spread over the input
             as they would be in a real table.
    control  3,200 prompts of the same sizes that share nothing: each has a
             prefix of its own (different from its first token on).

Tokens are counted with the model's tokenizer: by default the tiny model's
(``apache_beam_dynamo.TINY_MODEL_DIR``: byte-level, one token per byte of
ASCII text, so a 1,000-token prefix is 1,000 characters); ``model_dir``
(a directory with tokenizer.json) cuts them to 1,000 tokens of that model.

    python bench/prefix_workload.py [MODEL_DIR]   # prints sizes and samples
"""

import random
from typing import Optional

WORDS = (
    'the of and to in is was for on that with as by at from his it an were are '
    'which this be or has had not first one their its new after who they two '
    'her she been other when there all during into school time may years more '
    'most only over city some world would where later up such used many can '
    'state about national out known university united then made district '
    'system river report table engine cache token batch model prefix route '
    'worker pipeline stream window region answer question document summary'
).split()
QUESTIONS = (
    'What is the main point?', 'Summarize it in one line.',
    'Which city is named?', 'Who is mentioned first?', 'Is a river named?',
    'List three key words.', 'What year comes up?', 'Give it a title.',
    'Is it about a school?', 'What happens later?')

PREFIXES = 32
QUESTIONS_PER_PREFIX = 100
PREFIX_TOKENS = 1000
SEED = 16


def _tokenizer(model_dir: Optional[str] = None):
  """The tokenizer of ``model_dir`` (its tokenizer.json), by default the
  tiny model's."""
  from tokenizers import Tokenizer

  from apache_beam_dynamo import TINY_MODEL_DIR
  return Tokenizer.from_file(f'{model_dir or TINY_MODEL_DIR}/tokenizer.json')


def count_tokens(text: str, tokenizer=None) -> int:
  tokenizer = tokenizer or _tokenizer()
  return len(tokenizer.encode(text, add_special_tokens=False).ids)


def _text(rng: random.Random, tokens: int, tokenizer) -> str:
  """Random words, cut to exactly ``tokens`` tokens of the tiny tokenizer."""
  words, length = [], tokens + 20  # characters: enough when byte-level
  while True:
    while len(' '.join(words)) < length:
      words.append(rng.choice(WORDS))
    ids = tokenizer.encode(' '.join(words), add_special_tokens=False).ids
    if len(ids) >= tokens:
      return tokenizer.decode(ids[:tokens])
    length *= 2  # a BPE tokenizer: several characters a token


def _question(rng: random.Random, index: int) -> str:
  return f'\n\nQuestion {index}: {rng.choice(QUESTIONS)}\nAnswer:'


def shared(prefixes: int = PREFIXES,
           questions: int = QUESTIONS_PER_PREFIX,
           prefix_tokens: int = PREFIX_TOKENS,
           seed: int = SEED,
           model_dir: Optional[str] = None) -> list[str]:
  """``prefixes`` x ``questions`` prompts, each a shared prefix and a short
  question, shuffled."""
  rng = random.Random(seed)
  tokenizer = _tokenizer(model_dir)
  # Each prefix starts with its own number, so no two share a first block.
  heads = [
      f'Document {p}. ' + _text(rng, prefix_tokens - 16, tokenizer)
      for p in range(prefixes)
  ]
  prompts = [
      heads[p] + _question(rng, q) for p in range(prefixes)
      for q in range(questions)
  ]
  rng.shuffle(prompts)
  return prompts


def control(prefixes: int = PREFIXES,
            questions: int = QUESTIONS_PER_PREFIX,
            prefix_tokens: int = PREFIX_TOKENS,
            seed: int = SEED,
            model_dir: Optional[str] = None) -> list[str]:
  """As many prompts of the same sizes, sharing nothing: every prompt has
  a prefix of its own, starting with its own number."""
  rng = random.Random(seed + 1)
  tokenizer = _tokenizer(model_dir)
  prompts = [
      f'Document {i}. ' + _text(rng, prefix_tokens - 16, tokenizer) +
      _question(rng, i % questions) for i in range(prefixes * questions)
  ]
  rng.shuffle(prompts)
  return prompts


def prefix_key(prompt: str, length: Optional[int] = 256) -> str:
  """What the workload's prompts share: their first ``length`` characters."""
  return prompt[:length]


WORKLOADS = {'shared': shared, 'control': control}


def main() -> None:
  import sys
  model_dir = sys.argv[1] if len(sys.argv) > 1 else None
  tokenizer = _tokenizer(model_dir)
  for name, make in WORKLOADS.items():
    prompts = make(model_dir=model_dir)
    sizes = sorted(count_tokens(p, tokenizer) for p in prompts)
    distinct = len({p[:200] for p in prompts})
    print(f'{name}: {len(prompts)} prompts, tokens min {sizes[0]} median '
          f'{sizes[len(sizes) // 2]} max {sizes[-1]}, total {sum(sizes)}; '
          f'distinct 200-char starts: {distinct}')
    print('  e.g. ' + repr(prompts[0][:80]) + ' ... ' + repr(prompts[0][-40:]))


if __name__ == '__main__':
  main()
