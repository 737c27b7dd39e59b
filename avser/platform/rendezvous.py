"""The DDP rendezvous bound to the node's cluster address.

Ray Train's torch backend lets torch's ``TCPStore`` (the rendezvous every rank
dials) listen on every interface of rank 0's node, without authentication.
``NodeBoundTorchConfig`` is the same backend except for that store: rank 0
binds a socket to its node's Ray address (loopback on one machine, the
cluster address on a cluster) and hands it to the store, which otherwise
creates its own wildcard socket. gloo and NCCL are kept on that interface by
``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` (``avser cluster``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.utils import get_address_and_port
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LISTEN_BACKLOG = 128


def bound_listener(address: str, port: int) -> socket.socket:
    """A TCP socket listening on ``address:port`` only."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(LISTEN_BACKLOG)
    return sock


def rendezvous_store(address: str, port: int, rank: int, world_size: int,
                     timeout: timedelta) -> dist.TCPStore:
    """Rank 0 serves the store on ``address:port``; the others dial it."""
    if rank != 0:
        return dist.TCPStore(address, port, world_size, False, timeout)
    # detach(): the store owns the descriptor from here on; Python must not close it.
    fd = bound_listener(address, port).detach()
    print(f"DDP rendezvous listening on {address}:{port}", flush=True)
    return dist.TCPStore(address, port, world_size, True, timeout, master_listen_fd=fd)


def join_process_group(backend: str, world_rank: int, world_size: int, address: str, port: int,
                       timeout_s: int) -> None:
    """``init_process_group`` over the node-bound store (runs on every Train worker)."""
    if backend == "nccl":
        # As Ray's backend does: fail on NCCL timeouts instead of hanging.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    store = rendezvous_store(address, port, world_rank, world_size, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size,
                            timeout=timeout)


def _backend_for(worker_group, backend_config: TorchConfig) -> str:
    if backend_config.backend is not None:
        return backend_config.backend
    return "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"


class _NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        backend = _backend_for(worker_group, backend_config)
        if backend not in ("gloo", "nccl"):
            return super().on_start(worker_group, backend_config)
        address, port = worker_group.execute_single(0, get_address_and_port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([
            worker_group.execute_single_async(
                rank, join_process_group, backend=backend, world_rank=rank,
                world_size=len(worker_group), address=address, port=port,
                timeout_s=backend_config.timeout_s)
            for rank in range(len(worker_group))
        ])


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous listens on the node's address only."""

    @property
    def backend_cls(self):
        return _NodeBoundTorchBackend
