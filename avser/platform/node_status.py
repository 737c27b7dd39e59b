"""`avser cluster status`: the node, its cluster's ``ray status``, the job
server's answers with and without the token, and every socket the node
listens on, flagged EXPOSED when it is reachable beyond loopback and the
node's address (Ray 2.60 binds its gRPC servers to every interface unless
the node is on 127.0.0.1).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from avser.errors import AvserError
from avser.platform.nodes import (
    http_status, interfaces, is_loopback, is_running, ray_env, ray_executable, read_state,
    session_pids,
)


@dataclass
class Socket:
    local: str  # address:port
    pid: int | None

    @property
    def host(self) -> str:
        return self.local.rsplit(":", 1)[0].strip("[]")


def listening_sockets(pids: set[int]) -> list[Socket]:
    """Listening TCP sockets owned by ``pids`` (from ``ss -ltnpH``)."""
    if not shutil.which("ss"):
        raise AvserError("`ss` (iproute2) not found: cannot list listening sockets")
    found = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        for pid in owners & pids:
            found.append(Socket(cols[3], pid))
    return found


WILDCARDS = ("0.0.0.0", "*", "::", "")


def interface_addresses() -> set[str]:
    """The IPv4/IPv6 addresses of this network namespace's interfaces."""
    return {address for _, address in interfaces()}


def exposed(sockets: list[Socket], address: str, interfaces: set[str]) -> list[Socket]:
    """Sockets reachable beyond loopback and the node's address. Ray binds its
    gRPC servers to every interface unless the node's address is 127.0.0.1
    (Ray 2.60 has no bind-address setting for them): such a socket is
    exposed only where this namespace has other addresses."""
    allowed = {address, "::1", f"::ffff:{address}"}
    others = {a for a in interfaces if a not in allowed and not is_loopback(a)}
    return [s for s in sockets
            if (s.host in WILDCARDS and others)
            or (s.host not in WILDCARDS and s.host not in allowed
                and not s.host.startswith(("127.", "::ffff:127.")))]


def node_status(folder: Path, out=sys.stdout) -> int:
    """Print the node, the cluster's ``ray status``, the job server's answers
    with and without the token and the node's listening sockets; 0 when all is well."""
    state = read_state(folder)
    if state is None or not is_running(state):
        print(f"not running (state folder {folder})", file=out)
        return 3
    rc = 0
    print(f"Ray {state.role} on {state.address} (session {state.sid}), cluster {state.head}\n"
          f"  token file {state.token_file}\n  temp dir   {state.temp_dir}", file=out)
    ray = subprocess.run([ray_executable(), "status", f"--address={state.head}"], capture_output=True,
                         text=True, env=ray_env(Path(state.token_file), state.address))
    print(ray.stdout.rstrip() or ray.stderr.rstrip(), file=out)
    rc |= ray.returncode != 0
    if state.dashboard_url:
        token = Path(state.token_file).read_text().strip()
        url = f"{state.dashboard_url}/api/jobs/"
        print(f"job server {url}: HTTP {http_status(url, token)} with the token, "
              f"{http_status(url)} without (401 expected)", file=out)
    sockets = listening_sockets(set(session_pids(state.sid)))
    interfaces = interface_addresses()
    bad = exposed(sockets, state.address, interfaces)
    for sock in sockets:
        where = " (every interface: here " + ", ".join(sorted(interfaces)) + ")" \
            if sock.host in WILDCARDS else ""
        print(f"  {'EXPOSED' if sock in bad else 'ok':8} {sock.local} (pid {sock.pid}){where}", file=out)
    if bad:
        print("some sockets are reachable beyond loopback and the node's address: Ray binds its "
              "gRPC servers to every interface unless the node is on 127.0.0.1; put the "
              "cluster on a private network or firewall these ports", file=sys.stderr)
        rc = 1
    return rc
