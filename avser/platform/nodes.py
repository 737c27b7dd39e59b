"""`avser cluster`: this machine's Ray node, started, joined, inspected and stopped.

``up`` starts a head, ``join`` a worker node of a head elsewhere; ``down``
and ``env`` act on the node that a state folder describes (``status``:
:mod:`avser.platform.node_status`). Every node:

- binds its Ray services to one address, the node's cluster address
  (loopback on one machine; a private interface's address on a cluster):
  ``--node-ip-address``, the dashboard host and every port chosen free on it;
- authenticates with a token, always: a file of mode 600 (the state
  folder's, or ``--token-file`` / ``AVSER_CLUSTER_TOKEN_FILE``) handed to Ray
  through ``RAY_AUTH_TOKEN_PATH``, never on a command line;
- keeps Ray's temp dir under a parent it creates with mode 700 and checks
  is its own (Ray makes its session folders world-writable);
- runs ``ray start`` as the leader of a new session, so every process of the
  node shares one session id and ``down`` stops exactly those (never
  ``ray stop``, which kills every Ray process of the machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avser.errors import AvserError

HEAD, WORKER = "head", "worker"
STATE_FILE = "node.json"
TOKEN_FILE = "auth_token"
ENV_FILE = "env"
START_LOG = "ray-start.log"
TOKEN_ENV = "AVSER_CLUSTER_TOKEN_FILE"
STATE_DIR_ENV = "AVSER_CLUSTER_DIR"
# Ray's services, in the order their ports are handed out.
SERVICES = ("gcs", "dashboard", "client_server", "agent_http", "agent_grpc", "runtime_env_agent",
            "metrics_export", "node_manager", "object_manager", "autoscaler_metrics",
            "dashboard_metrics")
HEAD_ONLY = ("gcs", "dashboard", "client_server", "autoscaler_metrics", "dashboard_metrics")
# Below the kernel's ephemeral range (outgoing connections take ports there)
# and above Ray's default worker range (10002-19999).
PORT_RANGE = (20000, 32000)
STOP_SECONDS = 5.0
JOB_API_WAIT_SECONDS = 60.0
START_ATTEMPTS = 3


@dataclass
class NodeState:
    """What ``up``/``join`` leave in the state folder (``node.json``)."""

    role: str
    address: str  # this node's cluster address
    head: str  # the head's GCS address, host:port
    sid: int  # session id of every process of this node
    session_dir: str
    temp_dir: str
    token_file: str
    ports: dict[str, int] = field(default_factory=dict)
    worker_ports: tuple[int, int] | None = None
    mlflow_uri: str = ""
    storage_root: str = ""  # where the jobs' relative storage paths resolve

    @property
    def dashboard_url(self) -> str | None:
        port = self.ports.get("dashboard")
        return f"http://{self.address}:{port}" if port else None


# ---------------------------------------------------------------- files


def state_dir(given: str | Path | None = None) -> Path:
    """The node's state folder (made if missing), git-ignored and out of job uploads."""
    folder = Path(given or os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".ray-local").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"  # Ray honours nested .gitignore files when packaging
    if not ignore.exists():
        ignore.write_text("*\n")
    return folder


def read_state(folder: Path) -> NodeState | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("worker_ports"):
        data["worker_ports"] = tuple(data["worker_ports"])
    return NodeState(**data)


def write_state(folder: Path, state: NodeState) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    os.replace(tmp, folder / STATE_FILE)


def private_dir(path: Path) -> Path:
    """``path`` as a folder of mode 700 owned by this user; refused otherwise."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise AvserError(f"{path} is not a plain folder; remove it or choose another --temp-dir")
    if info.st_uid != os.getuid():
        raise AvserError(f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): "
                         "another user could replace Ray's files; choose another --temp-dir")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def default_temp_dir(folder: Path) -> Path:
    """A short path (Ray's unix sockets live in it: 107-byte limit) under a private parent."""
    parent = private_dir(Path("/tmp") / f"avser-ray-{os.getuid()}")
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    return parent / digest


def token_file(folder: Path, given: str | None, create: bool) -> Path:
    """The cluster token's file: ``given``, ``AVSER_CLUSTER_TOKEN_FILE``, or the
    state folder's (generated for a head). Its mode is made 600."""
    path = Path(given or os.environ.get(TOKEN_ENV) or folder / TOKEN_FILE).resolve()
    if not path.exists() or not path.read_text().strip():
        if not create:
            raise AvserError(f"no cluster token at {path}: copy the head's token file here "
                             f"(or pass --token-file); it is never passed on a command line")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- ports


def port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
            return True
        except OSError:
            return False


def pick_ports(address: str, services: tuple[str, ...], n_worker_ports: int,
               fixed: dict[str, int] | None = None, rng: random.Random | None = None
               ) -> tuple[dict[str, int], tuple[int, int] | None]:
    """A block of consecutive free ports on ``address``: one per service, then
    ``n_worker_ports`` for worker processes; ``fixed`` ports are kept as given."""
    fixed = {k: v for k, v in (fixed or {}).items() if v}
    for name, port in fixed.items():
        if not port_free(address, port):
            raise AvserError(f"port {port} ({name}) on {address} is in use; choose another")
    names = [s for s in services if s not in fixed]
    size = len(names) + n_worker_ports
    low, high = PORT_RANGE
    rng = rng or random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(low, high - size)
        block = range(base, base + size)
        if any(p in block for p in fixed.values()):
            continue
        if all(port_free(address, p) for p in block):
            ports = {**dict(zip(names, block)), **fixed}
            workers = (base + len(names), base + size - 1) if n_worker_ports else None
            return ports, workers
    raise AvserError(f"no {size} consecutive free ports on {address} in {low}-{high}")


# ---------------------------------------------------------------- processes


def _state_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, sid, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    if sid <= 1:
        return []
    return [pid for pid in _all_pids()
            if (fields := _state_fields(pid)) and fields[0] != "Z" and int(fields[3]) == sid]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_running(state: NodeState) -> bool:
    """Some process of the node's session names its session folder: the
    session id is really this node's, not a recycled number."""
    return any(state.session_dir in command_line(pid) for pid in session_pids(state.sid))


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _terminate(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _name(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_session(sid: int) -> None:
    """Ray's own order: the raylet, then the rest, then the GCS; then stragglers."""
    pids = session_pids(sid)
    groups = ([p for p in pids if _name(p) == "raylet"],
              [p for p in pids if _name(p) not in ("raylet", "gcs_server")],
              [p for p in pids if _name(p) == "gcs_server"])
    for group in groups:
        _terminate(group)
    _terminate(session_pids(sid))
    if session_pids(sid):
        raise AvserError(f"processes of session {sid} survived SIGKILL: {session_pids(sid)}")


# ---------------------------------------------------------------- ray start


def ray_executable() -> str:
    found = Path(sys.executable).with_name("ray")
    if found.exists():
        return str(found)
    which = shutil.which("ray")
    if not which:
        raise AvserError("no `ray` executable next to this Python or on PATH: run `make venv`")
    return which


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost")


def interfaces() -> list[tuple[str, str]]:
    """(interface name, address) of every IPv4/IPv6 address in this network namespace."""
    found = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return [(cols[1], cols[3].split("/")[0]) for cols in map(str.split, found.splitlines())
            if len(cols) > 3 and cols[2] in ("inet", "inet6")]


def interface_of(address: str) -> str | None:
    """The name of the interface that holds ``address`` in this network namespace."""
    return next((name for name, held in interfaces() if held == address), None)


def jobs_env(mlflow_uri: str = "", storage_root: str = "") -> dict[str, str]:
    """What every job of the cluster inherits: where it logs and keeps checkpoints."""
    from avser.platform.storage import STORAGE_ROOT_ENV

    env = {"MLFLOW_TRACKING_URI": mlflow_uri, STORAGE_ROOT_ENV: storage_root}
    return {k: v for k, v in env.items() if v}


def ray_env(token: Path, address: str, jobs: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``ray start`` and the node's processes run with."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1",
               # 0 keeps a one-machine Ray on loopback (avser.platform sets it for local
               # Ray); a node on a cluster address must be allowed to join others.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0" if is_loopback(address) else "1")
    interface = interface_of(address)
    if interface:
        # The workers inherit these: gloo and NCCL then talk over the cluster
        # address's interface, not whatever the host name resolves to (loopback).
        env.update(GLOO_SOCKET_IFNAME=interface, NCCL_SOCKET_IFNAME=interface)
    # Job entrypoints say `python ...`: make that this Python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(jobs or {})
    return env


def start_args(role: str, address: str, ports: dict[str, int], workers: tuple[int, int] | None,
               temp_dir: Path, head: str | None, num_cpus: int | None) -> list[str]:
    args = ["start", f"--node-ip-address={address}", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={ports['agent_http']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}", "--disable-usage-stats"]
    if role == HEAD:
        args += ["--head", f"--port={ports['gcs']}", f"--dashboard-host={address}",
                 f"--dashboard-port={ports['dashboard']}", "--include-dashboard=true",
                 f"--ray-client-server-port={ports['client_server']}"]
    else:
        args += [f"--address={head}"]
    if workers:
        args += [f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[1]}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return args


def _metric_env(ports: dict[str, int]) -> dict[str, str]:
    """The two Prometheus ports Ray has no flag for (fixed otherwise: two heads would clash)."""
    env = {}
    if "autoscaler_metrics" in ports:
        env["AUTOSCALER_METRIC_PORT"] = str(ports["autoscaler_metrics"])
    if "dashboard_metrics" in ports:
        env["DASHBOARD_METRIC_PORT"] = str(ports["dashboard_metrics"])
    return env


def _session_of(temp_dir: Path) -> tuple[str, int]:
    """The session folder ``ray start`` just made, and the session id of its processes."""
    latest = temp_dir / "session_latest"
    session = str(latest.resolve()) if latest.exists() else ""
    if not session:
        return "", 0
    for pid in _all_pids():
        if f"{session}/logs" in command_line(pid) and _name(pid) in ("gcs_server", "raylet") \
                and (fields := _state_fields(pid)):
            return session, int(fields[3])
    return session, 0


@dataclass
class StartRequest:
    role: str
    address: str = "127.0.0.1"
    head: str | None = None  # for join: the head's GCS host:port
    num_cpus: int | None = None
    ports: dict[str, int] = field(default_factory=dict)  # fixed ports, e.g. {"gcs": 6379}
    worker_ports: int = 128
    temp_dir: str | None = None
    token_file: str | None = None
    mlflow_uri: str = ""
    storage_root: str = ""


def start_node(folder: Path, request: StartRequest, out=sys.stdout) -> NodeState:
    """Start the node ``request`` describes; returns its state (also written to ``folder``).
    Already running: the running node's state, unchanged."""
    running = read_state(folder)
    if running is not None and is_running(running):
        print(f"already up ({running.role} on {running.address}); `avser cluster down` first "
              "to change it", file=out)
        return running
    token = token_file(folder, request.token_file, create=request.role == HEAD)
    temp_dir = private_dir(Path(request.temp_dir)) if request.temp_dir else default_temp_dir(folder)
    temp_dir.mkdir(exist_ok=True)
    services = SERVICES if request.role == HEAD else tuple(s for s in SERVICES if s not in HEAD_ONLY)
    for attempt in range(1, START_ATTEMPTS + 1):
        ports, workers = pick_ports(request.address, services, request.worker_ports, request.ports)
        args = start_args(request.role, request.address, ports, workers, temp_dir, request.head,
                          request.num_cpus)
        print(f"starting Ray {request.role} (attempt {attempt}): ray {' '.join(args)}", file=out,
              flush=True)
        (temp_dir / "session_latest").unlink(missing_ok=True)
        log = folder / START_LOG
        with log.open("w") as sink:
            # A new session: `down` finds every process of this node by its id.
            done = subprocess.run([ray_executable(), *args], cwd=folder, stdout=sink, stderr=sink,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  env={**ray_env(token, request.address,
                                                 jobs_env(request.mlflow_uri, request.storage_root)),
                                       **_metric_env(ports)})
        session, sid = _session_of(temp_dir)
        if done.returncode == 0 and sid:
            head = request.head or f"{request.address}:{ports['gcs']}"
            state = NodeState(request.role, request.address, head, sid, session, str(temp_dir),
                              str(token), ports, workers, request.mlflow_uri, request.storage_root)
            write_state(folder, state)
            (folder / ENV_FILE).write_text("\n".join(env_lines(state)) + "\n")
            if request.role == HEAD:
                wait_for_job_api(state)
            return state
        print(f"ray start failed (exit {done.returncode}); its output ({log}):\n"
              + "\n".join(log.read_text().splitlines()[-25:]), file=sys.stderr)
        if sid:
            stop_session(sid)
        if any(request.ports.values()) or done.returncode == 2:  # chosen ports, or a bad command line
            break
    raise AvserError(f"ray start failed; see {folder / START_LOG}")


def http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def wait_for_job_api(state: NodeState) -> None:
    """The job server answers after ``ray start`` returns."""
    url, token = f"{state.dashboard_url}/api/jobs/", Path(state.token_file).read_text().strip()
    deadline = time.monotonic() + JOB_API_WAIT_SECONDS
    while time.monotonic() < deadline:
        if http_status(url, token) == 200:
            return
        time.sleep(0.5)
    raise AvserError(f"the job server at {url} did not answer; logs: {state.session_dir}/logs")


def env_lines(state: NodeState) -> list[str]:
    """``export`` lines that point ray job submit / ray status / ray.init at the node's cluster."""
    lines = [f"export RAY_ADDRESS={state.head}", "export RAY_AUTH_MODE=token",
             f"export RAY_AUTH_TOKEN_PATH={state.token_file}"]
    if state.dashboard_url:
        lines.insert(0, f"export RAY_API_SERVER_ADDRESS={state.dashboard_url}")
    lines += [f"export {k}={v}" for k, v in jobs_env(state.mlflow_uri, state.storage_root).items()]
    return lines


def stop_node(folder: Path, out=sys.stdout) -> bool:
    """Stop the node of ``folder``; False when none was running."""
    state = read_state(folder)
    if state is None:
        print(f"not running (no state in {folder})", file=out)
        return False
    pids = session_pids(state.sid)
    if pids and not is_running(state):
        raise AvserError(f"session {state.sid} no longer looks like this node; nothing killed "
                         f"(remove {folder / STATE_FILE})")
    if pids:
        print(f"stopping {len(pids)} processes of session {state.sid}", file=out)
        stop_session(state.sid)
    (folder / STATE_FILE).unlink(missing_ok=True)
    (folder / ENV_FILE).unlink(missing_ok=True)
    print(f"stopped; logs kept in {state.session_dir}/logs", file=out)
    return bool(pids)
