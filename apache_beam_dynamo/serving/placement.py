"""Where one stack lives on a machine: its ports, namespace and run dir."""

import dataclasses
import os
import uuid
from typing import Optional

from apache_beam_dynamo.serving import ports


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where one stack lives on a machine: ports, namespace, private dir.

  ``system_ports`` and ``kv_event_ports`` have one entry per engine (KV
  event ports only with KV-aware routing).
  """
  run_dir: str
  namespace: str
  http_port: int
  etcd_client_port: int = 0
  etcd_peer_port: int = 0
  system_ports: tuple[int, ...] = ()
  kv_event_ports: tuple[int, ...] = ()
  external_etcd: Optional[str] = None

  @property
  def base_url(self) -> str:
    return f'http://127.0.0.1:{self.http_port}'

  @property
  def etcd_endpoints(self) -> str:
    return self.external_etcd or f'http://127.0.0.1:{self.etcd_client_port}'

  def system_url(self, engine: int) -> str:
    return f'http://127.0.0.1:{self.system_ports[engine]}'

  @property
  def etcd_data_dir(self) -> str:
    return os.path.join(self.run_dir, 'etcd')

  @property
  def chat_template_file(self) -> str:
    return os.path.join(self.run_dir, 'chat_template.jinja')

  @property
  def mocker_model_dir(self) -> str:
    return os.path.join(self.run_dir, 'model')


def place_dynamo(
    run_dir: str, engines: int, kv_events: bool,
    external_etcd: Optional[str]) -> Placement:
  """Free loopback ports for etcd, the frontend and ``engines`` engines (and
  their KV event publishers when ``kv_events``), in a fresh namespace."""
  http, client, peer, *rest = ports.pick_ports(
      3 + engines + (engines if kv_events else 0))
  return Placement(
      run_dir=run_dir,
      namespace=f'abd-{uuid.uuid4().hex[:12]}',
      http_port=http,
      etcd_client_port=client,
      etcd_peer_port=peer,
      system_ports=tuple(rest[:engines]),
      kv_event_ports=tuple(rest[engines:]),
      external_etcd=external_etcd)


def place_native(run_dir: str) -> Placement:
  """One free loopback port for vLLM's own server."""
  http, = ports.pick_ports(1)
  return Placement(run_dir, namespace='', http_port=http)
