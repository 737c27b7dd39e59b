"""Two machines inside this one: network namespaces joined by a veth pair.

Each namespace has loopback and one IPv4 address on the veth (IPv6 off), so
a socket bound to every interface there is reachable only from the other
namespace. Traffic goes only to loopback and those two addresses. Needs
root and iproute2; everything made is removed on exit, processes first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AVSER = str(REPO / ".venv" / "bin" / "avser") if (REPO / ".venv" / "bin" / "avser").exists() \
    else shutil.which("avser")
RAY = str(REPO / ".venv" / "bin" / "ray") if (REPO / ".venv" / "bin" / "ray").exists() \
    else shutil.which("ray")


def require_namespaces() -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2 (`ip`)")


@dataclass
class Node:
    namespace: str
    address: str
    state_dir: Path

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 180,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        """``args`` run inside this node's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.namespace, *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.namespace, *args], env=env, cwd=REPO,
                                text=True, **kwargs)

    def avser(self, *args: str, timeout: float = 180, command: str = "cluster",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``avser cluster ARGS`` (or another ``command``) for this node."""
        return self.run([AVSER, command, *args, "--state-dir", str(self.state_dir)],
                        env=clean_env(**(env or {})), timeout=timeout)

    def state(self) -> dict:
        return json.loads((self.state_dir / "node.json").read_text())

    def listening(self) -> list[str]:
        """Local addresses of every listening TCP socket in the namespace."""
        out = self.run(["ss", "-ltnH"]).stdout
        return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(extra)
    return env


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def two_namespaces(root: Path):
    """(head node, worker node) in namespaces of their own, removed on exit."""
    tag = os.getpid() % 100000
    subnet = f"10.231.{tag % 250}"
    names = (f"avs{tag}h", f"avs{tag}w")
    links = (f"avh{tag}", f"avw{tag}")
    nodes = [Node(ns, f"{subnet}.{i + 1}", root / ns) for i, ns in enumerate(names)]
    # A SIGTERM (a CI timeout, pkill) must still tear everything down.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for ns in names:
            _ip("netns", "add", ns)
        _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for node, link in zip(nodes, links):
            _ip("link", "set", link, "netns", node.namespace)
            _ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", link)
            _ip("-n", node.namespace, "link", "set", "lo", "up")
            _ip("-n", node.namespace, "link", "set", link, "up")
            node.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            node.state_dir.mkdir(parents=True, exist_ok=True)
        yield nodes[0], nodes[1]
    finally:
        for node in reversed(nodes):
            _stop(node)
        for ns in names:  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown short
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(node: Node) -> None:
    """The node's Ray processes, by `avser cluster down`, then by force."""
    if not (node.state_dir / "node.json").exists():
        return
    sid = node.state()["sid"]
    node.avser("down", timeout=90)
    for pid in _pids_in_namespace(node.namespace) + _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids_in_namespace(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _session_pids(sid: int) -> list[int]:
    from avser.platform.nodes import session_pids

    return session_pids(sid)
