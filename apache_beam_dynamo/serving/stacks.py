"""The embedded serving stack: its components, readiness and restarts.

``DynamoStack`` runs etcd (unless ``ETCD_ENDPOINTS`` names one),
``dynamo.frontend`` and one or more engines (``dynamo.vllm`` or
``dynamo.mocker``); ``NativeVLLMStack`` runs vLLM's own OpenAI server. Both
have the same small interface: ``start``, ``wait_ready``, ``first_failure``,
``restart``, ``stop``. Whether and when to restart is the supervisor's
policy (runtime/), not decided here.
"""

import abc
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, Mapping, Optional

from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.processes.process import LineSink
from apache_beam_dynamo.processes.reaper import Reaper
from apache_beam_dynamo.serving import commands
from apache_beam_dynamo.serving import discovery
from apache_beam_dynamo.serving import ledger as gpu_ledger
from apache_beam_dynamo.serving import machine
from apache_beam_dynamo.serving import placement as placements
from apache_beam_dynamo.serving import ports
from apache_beam_dynamo.serving import probes
from apache_beam_dynamo.serving import run_dir
from apache_beam_dynamo.serving import worker_files
from apache_beam_dynamo.serving.components import Component
from apache_beam_dynamo.serving.machine import Machine
from apache_beam_dynamo.serving.placement import Placement

_LOGGER = logging.getLogger(__name__)

READY_POLL_S = 0.1

# (what is awaited, the component to blame if it never happens, the check)
ReadinessStep = tuple[str, str, Callable[[], bool]]


class Stack(abc.ABC):
  """Components in start order, with a private run directory."""
  def __init__(
      self,
      config: StackConfig,
      on_line: LineSink,
      parent_env: Optional[Mapping[str, str]] = None):
    self.config = config  # as run here (a staged model's local copy)
    self._files = worker_files.WorkerFiles(config)
    self._on_line = on_line
    self._parent_env = dict(os.environ if parent_env is None else parent_env)
    self._reaper: Optional[Reaper] = None
    self._components: list[Component] = []
    self.machine: Optional[Machine] = None
    self.placement: Optional[Placement] = None
    self._ledger = gpu_ledger.Ledger()
    self._ledger_key: Optional[str] = None

  # -- the interface ---------------------------------------------------------

  @property
  def base_url(self) -> str:
    return self.placement.base_url

  @property
  def served_model_name(self) -> str:
    return self.config.served_model_name

  @property
  def engine_count(self) -> int:
    return len(self.machine.engine_gpus)

  @property
  def max_num_seqs(self) -> Optional[int]:
    """Each engine's --max-num-seqs when a flag sets it, else None."""
    value = dict(commands.with_defaults(
        self.machine.gpu_defaults, self.config.engine_args)).get('max-num-seqs')
    return int(value) if value and value.isdigit() else None

  def start(self) -> None:
    """Checks the machine, claims ports and a private dir, starts everything.

    Raises ComponentFailure when the machine cannot run the stack or a
    component cannot even be launched.
    """
    self.machine = self._inspect_machine()
    self._claim_gpus()
    self.config = self._files.prepare(self.machine)
    self._reaper = Reaper()
    directory = tempfile.mkdtemp(prefix='apache-beam-dynamo-')  # mode 0700
    self._reaper.watch_dir(directory)
    self.placement = self._place(directory)
    run_dir.prepare(self.config, self.placement)
    self._components = self._define_components()
    self._launch(self._components)

  def wait_ready(
      self,
      timeout_s: float,
      cancelled: Callable[[], bool] = lambda: False) -> None:
    """Blocks until the model answers a request; raises ComponentFailure.

    Polls every READY_POLL_S; gives up early once ``cancelled()`` is true.
    """
    deadline = time.monotonic() + timeout_s
    waiting_on = self._components[-1]
    for step, component_name, check in self._readiness_steps():
      waiting_on = self._component(component_name)
      while not check():
        self._raise_if_exited()
        if cancelled():
          raise waiting_on.process.failure('startup cancelled')
        if time.monotonic() > deadline:
          raise waiting_on.process.failure(
              f'not ready after {timeout_s:.0f} s (waiting for {step})',
              remedy='Raise startup_timeout_s if the model needs longer to '
              'load; otherwise see the log below.')
        time.sleep(READY_POLL_S)
    remaining = max(deadline - time.monotonic(), 5.0)
    problem = probes.warm_up(self.base_url, self.served_model_name, remaining)
    if problem:
      self._raise_if_exited()
      raise waiting_on.process.failure(problem)

  def first_failure(self) -> Optional[ComponentFailure]:
    """The first component that has failed (see Component.failure), or None."""
    now = time.monotonic()
    for component in self._components:
      failure = component.failure(now)
      if failure is not None:
        return failure
    return None

  def restart(self, component_name: str) -> None:
    """Replaces a failed component; restarting the first restarts them all.

    Ports stay the same (clients keep their URL) unless one was taken
    meanwhile, in which case the whole stack moves to new ports.
    """
    index = next(
        i for i, c in enumerate(self._components) if c.name == component_name)
    affected = self._components[index:] if index == 0 else [
        self._components[index]
    ]
    self._stop(reversed(affected))
    if self._ledger_key is not None and any(c.uses_gpu for c in affected):
      self._ledger.mark_restarting(self._ledger_key)
    if not all(ports.is_free(p) for c in affected for p in c.ports()):
      _LOGGER.warning('A port of the stack was taken; moving it to new ports.')
      self._stop(reversed(self._components))
      self.placement = self._place(self.placement.run_dir)
      affected = self._components
    self._launch(affected)

  def after_ready(self) -> None:
    """After each start or recovery: lets other stacks start or stop on its
    GPUs (ledger), and publishes the start cache (compile_cache), once, in
    the background."""
    if self._ledger_key is not None:
      self._ledger.mark_running(self._ledger_key)
    self._files.publish_in_background()

  def metrics_urls(self) -> list[str]:
    """Where the stack's Prometheus pages are (``/metrics`` on each)."""
    return [self.base_url] if self.placement is not None else []

  def engines_alive_besides(self, name: str) -> bool:
    """Whether another engine still serves while engine ``name`` is
    replaced (replacing etcd or the frontend leaves nothing serving)."""
    return name.startswith('engine') and any(
        c.name != name and c.is_engine and c.alive() for c in self._components)

  def pids(self) -> dict[str, int]:
    """Process id of each running component, by component name."""
    return {
        c.name: c.process.pid for c in self._components if c.process is not None
    }

  def stop(self, grace_s: Optional[float] = None) -> None:
    """Stops every component (SIGTERM, grace, SIGKILL) and removes the dir.

    ``grace_s`` defaults to the config's ``shutdown_grace_s``. The stack
    holds its GPUs in the ledger (as ``stopping``) until its processes are
    gone.
    """
    if self._ledger_key is not None:
      self._ledger.mark_stopping(self._ledger_key)
    self._stop(reversed(self._components), grace_s)
    self._files.wait()
    if self.placement is not None:
      shutil.rmtree(self.placement.run_dir, ignore_errors=True)
    if self._reaper is not None:
      if self.placement is not None:
        self._reaper.forget_dir(self.placement.run_dir)
      self._reaper.close()
      self._reaper = None
    if self._ledger_key is not None:
      self._ledger.release(self._ledger_key)
      self._ledger_key = None

  # -- shared machinery ------------------------------------------------------

  def _claim_gpus(self) -> None:
    """Records the stack's GPUs and memory share in the machine's GPU
    ledger; fails at once (ComponentFailure) when they would not fit."""
    gpus = self.machine.held_gpus
    if not gpus:
      return
    share = gpu_ledger.memory_share(commands.with_defaults(
        self.machine.gpu_defaults, self.config.engine_args))
    key = f'{os.getpid()}-{self.config.fingerprint()}'
    self._ledger.claim(key, self.served_model_name, gpus, share)
    self._ledger_key = key

  def _component(self, name: str) -> Component:
    return next(c for c in self._components if c.name == name)

  def _launch(self, components: list[Component]) -> None:
    """Launches ``components`` without waiting between them, engines first:
    they take longest (a GPU engine imports for ~15 s before it looks for
    etcd), and Dynamo's processes retry etcd until it answers, so nothing
    needs to wait for anything else (docs/gpu.md, start-up phases)."""
    for component in sorted(components, key=lambda c: not c.is_engine):
      self._before_launch(component)
      component.launch(self._on_line, self._reaper)

  def _stop(self, components, grace_s: Optional[float] = None) -> None:
    grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
    for component in components:
      component.stop(grace_s, self._reaper)

  def _raise_if_exited(self) -> None:
    for component in self._components:
      if not component.process.alive():
        raise component.process.failure('exited during startup')

  # -- what differs per stack ------------------------------------------------

  @abc.abstractmethod
  def _inspect_machine(self) -> Machine:
    """Fails fast, before any process starts, when the worker can't run it."""

  @abc.abstractmethod
  def _place(self, directory: str) -> Placement:
    """Claims free loopback ports."""

  @abc.abstractmethod
  def _define_components(self) -> list[Component]:
    """Components in start order; a restart of the first restarts all."""

  @abc.abstractmethod
  def _readiness_steps(self) -> list[ReadinessStep]:
    """The steps to readiness, in the order they must pass."""

  def _before_launch(self, component: Component) -> None:
    """Hook run right before a component is launched."""


class DynamoStack(Stack):
  """etcd + dynamo.frontend + one or more Dynamo engines, on loopback."""
  def _inspect_machine(self) -> Machine:
    return machine.inspect_for_dynamo(self.config, self._parent_env)

  def _place(self, directory: str) -> Placement:
    return placements.place_dynamo(
        directory, self.engine_count, self.config.router_mode == 'kv',
        self.machine.external_etcd)

  def _define_components(self) -> list[Component]:
    env, cfg = self._parent_env, self.config
    components = []
    if not self.machine.external_etcd:
      components.append(
          Component(
              'etcd',
              lambda: commands.etcd_launch(
                  self.machine.etcd_binary, self.placement, env),
              lambda: probes.etcd_healthy(self.placement.etcd_endpoints),
              lambda: [self.placement.etcd_client_port,
                       self.placement.etcd_peer_port]))
    components.append(
        Component(
            'frontend',
            lambda: commands.frontend_launch(cfg, self.placement, env),
            lambda: probes.get_ok(self.placement.base_url, '/live'),
            lambda: [self.placement.http_port]))
    for index in range(self.engine_count):
      components.append(self._engine_component(index))
    return components

  def _engine_component(self, index: int) -> Component:
    def ports_of_engine():
      kv = self.placement.kv_event_ports
      return [self.placement.system_ports[index]] + ([kv[index]] if kv else [])

    return Component(
        commands.engine_name(index, self.engine_count),
        lambda: commands.engine_launch(
            self.config, self.placement, self._parent_env, index,
            self.machine.engine_gpus[index], self.machine.gpu_defaults,
            self.machine.has_flashinfer, self._files.start_cache_dir),
        # '/' is not routed: the 404 proves the worker's event loop answers,
        # without the ERROR line its status routes log for every 503.
        lambda: probes.answers(self.placement.system_url(index), '/'),
        ports_of_engine,
        registered=lambda: probes.model_ready(
            self.base_url, self.served_model_name))

  def metrics_urls(self) -> list[str]:
    """The frontend's, then each engine's status server (DYN_SYSTEM_PORT)."""
    if self.placement is None:
      return []
    return [self.base_url] + [
        self.placement.system_url(i) for i in range(self.engine_count)
    ]

  def _before_launch(self, component: Component) -> None:
    # A restarted etcd starts empty: registrations of dead processes must not
    # survive it, and its member identity changes with its ports.
    if component.name == 'etcd':
      shutil.rmtree(self.placement.etcd_data_dir, ignore_errors=True)
    # A replaced engine's registration would outlive it by its lease (~10 s)
    # and draw requests that fail: drop it now.
    elif component.is_engine and self._etcd_up():
      discovery.revoke_dead(
          self.placement.etcd_endpoints, self.placement.namespace)

  def _etcd_up(self) -> bool:
    return bool(self.machine.external_etcd) or self._components[0].alive()

  def _readiness_steps(self) -> list[ReadinessStep]:
    name = self.served_model_name
    engine = commands.engine_name(0, self.engine_count)
    own_etcd = [] if self.machine.external_etcd else [
        ('etcd /health', 'etcd',
         lambda: probes.etcd_healthy(self.placement.etcd_endpoints))
    ]
    return own_etcd + [
        ('frontend /live', 'frontend',
         lambda: probes.get_ok(self.base_url, '/live')),
        (f'model {name!r} listed in /v1/models', engine,
         lambda: probes.model_listed(self.base_url, name)),
        (f'/v1/models/{name}/ready', engine,
         lambda: probes.model_ready(self.base_url, name)),
        (f'{self.engine_count} engine(s) registered', engine,
         lambda: probes.model_workers(self.base_url, name) >= self.
         engine_count),
    ]


class NativeVLLMStack(Stack):
  """vLLM's own OpenAI-compatible server (``use_dynamo=False``)."""
  def _inspect_machine(self) -> Machine:
    return machine.inspect_for_native_vllm(self.config, self._parent_env)

  def _place(self, directory: str) -> Placement:
    return placements.place_native(directory)

  def _define_components(self) -> list[Component]:
    return [
        Component(
            'vllm-server',
            lambda: commands.native_vllm_launch(
                self.config, self.placement, self._parent_env,
                self.machine.engine_gpus[0], self.machine.gpu_defaults,
                self.machine.has_flashinfer, self._files.start_cache_dir),
            lambda: probes.get_ok(self.base_url, '/health'),
            lambda: [self.placement.http_port])
    ]

  def _readiness_steps(self) -> list[ReadinessStep]:
    name = self.served_model_name
    return [
        ('/health', 'vllm-server',
         lambda: probes.get_ok(self.base_url, '/health')),
        (f'model {name!r} listed in /v1/models', 'vllm-server',
         lambda: probes.model_listed(self.base_url, name)),
    ]


def build_stack(
    config: StackConfig,
    on_line: LineSink,
    parent_env: Optional[Mapping[str, str]] = None) -> Stack:
  kind = DynamoStack if config.use_dynamo else NativeVLLMStack
  return kind(config, on_line, parent_env)
