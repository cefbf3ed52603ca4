"""Sockets, files and logs of a running stack; and bad input of every kind:
each is a clear error or a dead letter, nothing else is lost, nothing hangs."""

import logging
import os
import socket
import stat
import threading

import apache_beam as beam
import psutil
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import OpenAIChatMessage, VLLMCompletionsModelHandler
from apache_beam_dynamo.errors import ConfigError, StackStartupError
from apache_beam_dynamo.serving.ports import PORT_RANGE_ENV

from conftest import (
    run_dirs, run_pipeline, serving_pids, stack_pids, stack_processes)

SECRET = 'zebra-quartz-7781'  # appears in prompts only


class SocketAudit(threading.Thread):
  """Records the listening sockets of every stack process, and the run dirs,
  while a pipeline runs."""
  def __init__(self):
    super().__init__(daemon=True)
    self.sockets, self.run_dirs, self.done = set(), set(), threading.Event()

  def run(self):
    while not self.done.is_set():
      for proc in stack_processes():
        try:
          cmdline = proc.cmdline()
          name = cmdline[2] if len(cmdline) > 2 else cmdline[0]
          for conn in proc.net_connections('inet'):
            if conn.status == psutil.CONN_LISTEN:
              self.sockets.add((name, conn.laddr.ip))
        except psutil.Error:
          pass
      for path in run_dirs():
        try:
          self.run_dirs.add((path, stat.S_IMODE(os.stat(path).st_mode),
                             stat.S_IMODE(os.stat(f'{path}/etcd').st_mode)))
        except OSError:
          pass
      self.done.wait(0.3)


def test_sockets_files_and_logs_while_a_pipeline_runs(completions_handler,
                                                      caplog, no_leftovers):
  caplog.set_level(logging.DEBUG)
  audit = SocketAudit()
  audit.start()
  prompts = [f'{SECRET} {i}' for i in range(300)]

  def pipeline(p):
    out = (p | beam.Create(prompts)
           | RunInference(completions_handler(), inference_args={'max_tokens': 3})
           | beam.Map(lambda r: r.example))
    assert_that(out, equal_to(prompts))

  run_pipeline(pipeline)
  audit.done.set()
  audit.join()
  # Loopback only, except Dynamo's ZMQ event publishers in the engine
  # (README, "Network").
  assert audit.sockets
  for name, ip in audit.sockets:
    assert ip in ('127.0.0.1', '::1') or (ip == '0.0.0.0' and
                                          name == 'dynamo.mocker'), (name, ip)
  assert audit.run_dirs
  assert all(mode == 0o700 for _, mode, _ in audit.run_dirs)
  assert all(etcd_mode == 0o700 for _, _, etcd_mode in audit.run_dirs)
  # Prompts never reach the logs at INFO or above (ours or the children's).
  leaked = [r.getMessage() for r in caplog.records
            if r.levelno >= logging.INFO and SECRET in r.getMessage()]
  assert not leaked
  caplog.clear()  # DEBUG records hold references to the pipeline's DoFns


def test_malformed_chat_messages_are_dead_letters(chat_handler, no_leftovers):
  good = [[OpenAIChatMessage('user', f'q{i}')] for i in range(10)]
  bad = [
      [OpenAIChatMessage('wizard', 'hi')],  # unknown role
      [{'role': 'user'}],  # no content
      [],  # no messages
      'just a string',  # not a conversation
      [{'role': 'user', 'content': 42}],  # content not a string
  ]

  def pipeline(p):
    main, dead = (
        p | beam.Create(good + bad)
        | RunInference(chat_handler(), inference_args={'max_tokens': 2})
        .with_exception_handling())
    assert_that(main | beam.Map(lambda r: r.example[0].content),
                equal_to([f'q{i}' for i in range(10)]))
    assert_that(
        dead.failed_postprocessing[0]
        | beam.Map(lambda pair: pair[1][0].__name__),
        equal_to(['InvalidElementError'] * len(bad)), label='Dead')

  run_pipeline(pipeline)


def _infer(handler):
  return lambda p: (p | beam.Create(['x'])
                    | RunInference(handler, inference_args={'max_tokens': 2}))


def _fails_with(handler, error, match):
  """The pipeline fails with ``error``, found before any stack process
  started (so no startup timeout was waited out)."""
  with pytest.raises(error, match=match):
    run_pipeline(_infer(handler))
  assert not serving_pids()


def test_missing_model_directory_on_the_worker(caplog, no_leftovers):
  # engine="vllm" can't check a local path on the user's machine (it may
  # only exist on workers); the worker says so before starting anything.
  handler = VLLMCompletionsModelHandler('/no/such/model', use_dynamo=True)
  _fails_with(handler, StackStartupError,
              'model directory .*/no/such/model.* does not exist')
  caplog.clear()


def test_chat_template_unreadable_on_the_worker(chat_handler, tmp_path, caplog,
                                                no_leftovers):
  template = tmp_path / 'template.jinja'
  template.write_text('{{ messages }}')
  handler = chat_handler(str(template))
  template.unlink()  # exists when the pipeline is built, gone on the worker
  with pytest.raises(ConfigError, match='Could not read chat_template_path'):
    run_pipeline(
        lambda p: (p | beam.Create([[OpenAIChatMessage('user', 'x')]])
                   | RunInference(handler, inference_args={'max_tokens': 2})))
  assert not stack_pids('apache_beam_dynamo.runtime.supervisor')
  caplog.clear()


def test_no_etcd_binary(completions_handler, caplog, no_leftovers):
  handler = completions_handler(etcd_binary='/no/such/etcd')
  _fails_with(handler, StackStartupError,
              'etcd_binary=.*is not an executable file')
  caplog.clear()


def test_every_candidate_port_taken(completions_handler, monkeypatch, caplog,
                                    no_leftovers):
  holder = socket.socket()
  holder.bind(('127.0.0.1', 0))
  holder.listen()
  port = holder.getsockname()[1]
  monkeypatch.setenv(PORT_RANGE_ENV, f'{port}-{port}')
  try:
    _fails_with(completions_handler(), StackStartupError,
                'No free TCP port on 127.0.0.1')
  finally:
    holder.close()
  caplog.clear()


def test_mocker_without_dynamo_is_rejected_when_built(tiny_model):
  with pytest.raises(ConfigError, match='needs use_dynamo=True'):
    VLLMCompletionsModelHandler(tiny_model, engine='mocker')


def test_vllm_engine_without_a_gpu_fails_at_once(caplog, no_leftovers):
  _fails_with(
      VLLMCompletionsModelHandler('Qwen/Qwen3-0.6B', use_dynamo=True),
      StackStartupError, 'engine: .*(vLLM|GPU)')
  caplog.clear()
