#!/usr/bin/env python3
"""The package's lean HTTP client against aiohttp, on a running frontend.

    python bench/http_clients.py --url http://127.0.0.1:PORT --model NAME \
        [--prompts_file prompts.json] [--concurrency 512] \
        [--plan aiohttp:4:8192,lean:4:8192,aiohttp:128:4096,lean:128:4096] \
        [--json OUT.json]

Each plan entry ``client:max_tokens:requests`` runs in a fresh process:
``requests`` POSTs to ``/v1/completions`` (one prompt each, ``ignore_eos``,
temperature 0), ``--concurrency`` in flight, the same way for both clients:
that many asyncio tasks, each sending the next request when its reply is
in (what the handler's client does).

  lean     apache_beam_dynamo.transport.ConnectionPool (size = concurrency)
  aiohttp  one aiohttp.ClientSession, TCPConnector(limit=concurrency),
           keep-alive

Reports requests/s, output tokens/s and the client process's CPU seconds
(user + system, all threads) per 1,000 requests over the timed section.
Issue 14: keep the lean client only if it wins by more than 10%.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse


async def _run_lean(url: str, bodies: list[bytes], concurrency: int):
  try:
    from apache_beam_dynamo.net.transport import ConnectionPool
  except ImportError:  # the flat layout before issue 14's refactor
    from apache_beam_dynamo.transport import ConnectionPool
  parsed = urllib.parse.urlsplit(url)
  pool = ConnectionPool(parsed.hostname, parsed.port, size=concurrency)
  path = parsed.path

  async def post(body):
    return await pool.post(path, body, timeout_s=600)

  try:
    return await _drive(post, bodies, concurrency)
  finally:
    pool.close()


async def _run_aiohttp(url: str, bodies: list[bytes], concurrency: int):
  import aiohttp
  connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
  timeout = aiohttp.ClientTimeout(total=600)
  headers = {'Content-Type': 'application/json'}
  async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

    async def post(body):
      async with session.post(url, data=body, headers=headers) as reply:
        return reply.status, await reply.read()

    return await _drive(post, bodies, concurrency)


async def _drive(post, bodies, concurrency):
  replies = [None] * len(bodies)
  pending = iter(range(len(bodies)))

  async def worker():
    for index in pending:
      try:
        replies[index] = await post(bodies[index])
      except Exception as e:  # pylint: disable=broad-except
        replies[index] = (0, repr(e).encode())

  await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
  return replies


def run_one(args, client: str, max_tokens: int, requests: int) -> dict:
  with open(args.prompts_file) as f:
    prompts = json.load(f)
  bodies = [json.dumps({
      'model': args.model, 'prompt': prompts[i % len(prompts)],
      'max_tokens': max_tokens, 'ignore_eos': True, 'temperature': 0.0,
  }).encode() for i in range(requests)]
  url = args.url.rstrip('/') + '/v1/completions'
  run = _run_lean if client == 'lean' else _run_aiohttp
  cpu0, t0 = sum(os.times()[:2]), time.perf_counter()
  replies = asyncio.run(run(url, bodies, args.concurrency))
  wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - cpu0
  ok = [r for r in replies if r and r[0] == 200]
  tokens = sum(json.loads(body)['usage']['completion_tokens'] for _, body in ok)
  errors = [r[1][:200].decode(errors='replace') for r in replies
            if not r or r[0] != 200][:3]
  return {
      'client': client, 'max_tokens': max_tokens, 'requests': requests,
      'concurrency': args.concurrency, 'ok': len(ok), 'errors': errors,
      'wall_s': wall, 'requests_per_s': len(ok) / wall,
      'output_tokens_per_s': tokens / wall, 'cpu_s': cpu,
      'cpu_s_per_1k_requests': cpu / max(len(ok), 1) * 1000,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--url', required=True)
  parser.add_argument('--model', required=True)
  parser.add_argument('--prompts_file', required=True,
                      help='JSON list of prompt strings')
  parser.add_argument('--concurrency', type=int, default=512)
  parser.add_argument(
      '--plan', default='aiohttp:4:8192,lean:4:8192,aiohttp:128:4096,lean:128:4096')
  parser.add_argument('--json', default=os.path.join(
      os.environ.get('OUT', '.'), 'http_clients.json'))
  parser.add_argument('--budget_s', type=float, default=1e9,
                      help='skip the remaining entries after this long')
  parser.add_argument('--one', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    client, max_tokens, requests = args.one.split(':')
    print('RESULT ' + json.dumps(run_one(args, client, int(max_tokens),
                                         int(requests))), flush=True)
    return
  started = time.monotonic()
  report = {'url': args.url, 'model': args.model,
            'concurrency': args.concurrency, 'runs': []}
  for entry in args.plan.split(','):
    if time.monotonic() - started > args.budget_s:
      report['runs'].append({'entry': entry, 'skipped': 'budget'})
      continue
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--one', entry,
         '--url', args.url, '--model', args.model,
         '--prompts_file', args.prompts_file,
         '--concurrency', str(args.concurrency)],
        capture_output=True, text=True, timeout=900)
    line = next((l for l in done.stdout.splitlines()
                 if l.startswith('RESULT ')), None)
    if line is None:
      result = {'entry': entry, 'error': done.stderr[-2000:]}
    else:
      result = json.loads(line[len('RESULT '):])
    report['runs'].append(result)
    print(json.dumps(result), flush=True)
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()
