"""platform/local-cluster (a wrapper of `avser cluster`): a real Ray head on
loopback with token auth.

One cluster for the module (state and Ray temp dir of its own, explicit free
ports), driven only through the script and the `ray` CLI, as a user would:
up, submit a job, be refused without the token, every socket on loopback,
status, down. Never `ray stop`: it would kill other people's clusters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "platform" / "local-cluster"
RAY = str(REPO / ".venv" / "bin" / "ray") if (REPO / ".venv" / "bin" / "ray").exists() else shutil.which("ray")
HELLO_LINE = "avser hello: square(7)=49 node_ip=127.0.0.1"
LOOPBACK = re.compile(r"^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]|::1):[0-9]+$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything that points Ray elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_state(state_dir: Path) -> dict:
    """The node's state (``node.json``) as `avser cluster up` wrote it."""
    return json.loads((state_dir / "node.json").read_text())


def session_pids(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
    rows = (line.split() for line in out.splitlines())
    return {int(p) for p, s, stat in rows if int(s) == sid and not stat.startswith("Z")}


def sockets(flags: str) -> list[tuple[str, str, set[int], str]]:
    """(local, peer, pids, line) for each socket `ss -H <flags>` lists."""
    out = subprocess.run(["ss", "-H", "-p", "-n", flags], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split()
        # -t/-u together add a Netid column in front.
        local, peer = (cols[4], cols[5]) if cols[0] in ("tcp", "udp") else (cols[3], cols[4])
        rows.append((local, peer, {int(p) for p in re.findall(r"pid=(\d+)", line)}, line))
    return rows


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def http_json(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


@dataclass
class Cluster:
    state_dir: Path
    env: dict[str, str]  # for the script
    up_output: str
    gcs_port: int
    dashboard_port: int

    @property
    def state(self) -> dict:
        return read_state(self.state_dir)

    @property
    def token_file(self) -> Path:
        return self.state_dir / "auth_token"

    def service_ports(self) -> set[int]:
        return {int(port) for port in self.state["ports"].values()}

    def worker_ports(self) -> set[int]:
        low, high = self.state["worker_ports"]
        return set(range(low, high + 1))

    def client_env(self) -> dict[str, str]:
        """What `platform/local-cluster up` tells a user to set."""
        return clean_env(
            RAY_ADDRESS=f"http://127.0.0.1:{self.dashboard_port}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("ss") is None:
        pytest.skip("`ss` (iproute2) is not installed: cannot check which addresses the cluster listens on")
    if shutil.which("setsid") is None:
        pytest.skip("`setsid` (util-linux) is not installed: platform/local-cluster needs it")
    if RAY is None:
        pytest.skip("no `ray` executable (.venv/bin/ray)")
    state_dir = tmp_path_factory.mktemp("cluster-state")
    # Short path: Ray's unix sockets live in the temp dir (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="avser-rt-", dir="/tmp"))
    # Jobs inherit the cluster's MLFLOW_TRACKING_URI; keep the repo's store untouched.
    env = clean_env(AVSER_CLUSTER_DIR=str(state_dir), MLFLOW_TRACKING_URI=f"sqlite:///{state_dir}/mlflow.db")
    gcs_port, dashboard_port = free_port(), free_port()
    sid = None
    try:
        up = run([str(SCRIPT), "up", "--num-cpus", "2", "--port", str(gcs_port),
                  "--dashboard-port", str(dashboard_port), "--temp-dir", str(temp_dir),
                  "--worker-ports", "64"], env)
        if (state_dir / "node.json").exists():
            sid = read_state(state_dir)["sid"]
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        yield Cluster(state_dir, env, up.stdout, gcs_port, dashboard_port)
    finally:
        down = run([str(SCRIPT), "down"], env, timeout=90)
        if sid is not None:
            for pid in session_pids(sid):  # only if `down` failed: this cluster's own pids
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert down.returncode == 0, f"down failed:\n{down.stdout}\n{down.stderr}"


def test_up_prints_how_to_submit(cluster):
    out = cluster.up_output
    assert f"http://127.0.0.1:{cluster.dashboard_port}" in out
    assert f"RAY_ADDRESS=http://127.0.0.1:{cluster.dashboard_port} RAY_AUTH_MODE=token" in out
    assert f"RAY_AUTH_TOKEN_PATH={cluster.token_file}" in out
    assert "job submit --working-dir . -- python jobs/tune_fusion.py --config configs/tune_fusion.yaml" in out
    assert cluster.token_file.stat().st_mode & 0o077 == 0, "token file must be private"
    assert len(cluster.token_file.read_text().strip()) >= 32


def test_up_again_is_idempotent(cluster):
    sid = cluster.state["sid"]
    again = run([str(SCRIPT), "up"], cluster.env)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    assert cluster.state["sid"] == sid


def test_job_submit_succeeds(cluster):
    env = cluster.client_env()
    sub_id = f"avser-hello-{os.getpid()}"
    submit = run([RAY, "job", "submit", "--submission-id", sub_id,
                  "--runtime-env", "platform/runtime_env.yaml",
                  "--", "python", "tests/jobs/hello.py"], env, timeout=180)
    assert submit.returncode == 0, f"{submit.stdout}\n{submit.stderr}"
    status = run([RAY, "job", "status", sub_id], env)
    assert f"Job '{sub_id}' succeeded" in status.stdout, status.stdout + status.stderr
    info = http_json(f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/{sub_id}",
                     cluster.token_file.read_text().strip())
    assert info["status"] == "SUCCEEDED"
    logs = run([RAY, "job", "logs", sub_id], env)
    assert HELLO_LINE in logs.stdout
    # Jobs inherit the cluster's environment (set when `up` ran).
    assert f"avser hello: mlflow={cluster.env['MLFLOW_TRACKING_URI']}" in logs.stdout
    # The code comes from the uploaded working_dir, and the runtime env's
    # "/data" exclude did not drop the avser.data package.
    origin = re.search(r"avser hello: avser\.data from (\S+)", logs.stdout)
    assert origin, logs.stdout
    assert "working_dir_files" in origin[1] and not origin[1].startswith(str(REPO)), origin[1]


def test_cluster_yaml_is_a_valid_launcher_config():
    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert set(config["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    assert any("pip install" in c and "~/avser" in c for c in config["setup_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"])


def test_runtime_env_yaml_is_valid():
    yaml = pytest.importorskip("yaml")
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load((REPO / "platform" / "runtime_env.yaml").read_text())
    RuntimeEnv(**spec)
    assert spec["working_dir"] == "."
    assert {".venv", ".git", "/mlruns", "/ray_results", "/data", "*.parquet"} <= set(spec["excludes"])
    assert "MLFLOW_TRACKING_URI" not in spec["env_vars"]  # inherited from the cluster, see the file


def test_requests_without_token_are_refused(cluster, tmp_path):
    url = f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/"
    assert http_status(url) == 401
    assert http_status(url, token="not-the-token") == 403
    assert http_status(url, token=cluster.token_file.read_text().strip()) == 200

    # The CLI without the token (and with a HOME whose ~/.ray holds none).
    env = clean_env(RAY_ADDRESS=f"http://127.0.0.1:{cluster.dashboard_port}", HOME=str(tmp_path))
    sub_id = f"avser-no-token-{os.getpid()}"
    refused = run([RAY, "job", "submit", "--no-wait", "--submission-id", sub_id,
                   "--", "echo", "should-not-run"], env, cwd=tmp_path)
    assert refused.returncode != 0
    assert "Unauthorized" in refused.stdout + refused.stderr or "Authentication" in refused.stdout + refused.stderr
    listed = run([RAY, "job", "list"], cluster.client_env())
    assert listed.returncode == 0 and sub_id not in listed.stdout


def test_every_socket_is_on_loopback(cluster):
    sid = cluster.state["sid"]
    pids = session_pids(sid)
    assert pids, "no processes found in the cluster's session"
    ports = cluster.service_ports() | cluster.worker_ports()

    listening = [s for s in sockets("-ltu") if s[2] & pids or port_of(s[0]) in ports]
    owned_ports = {port_of(local) for local, _, owners, _ in listening if owners & pids}
    # Every service port is taken by the cluster itself, and no worker strays from its range.
    assert cluster.service_ports() <= owned_ports, "\n".join(s[3] for s in listening)
    assert owned_ports <= ports, "\n".join(s[3] for s in listening)
    exposed = [line for local, _, _, line in listening if not LOOPBACK.match(local)]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)

    # Connected sockets too: nothing of the cluster talks to another address.
    connected = [s for s in sockets("-tu") if s[2] & pids]
    remote = [line for local, peer, _, line in connected
              if not (LOOPBACK.match(local) and LOOPBACK.match(peer))]
    assert not remote, "traffic beyond loopback:\n" + "\n".join(remote)


def test_status_reports_the_cluster(cluster):
    status = run([str(SCRIPT), "status"], cluster.env)
    assert status.returncode == 0, f"{status.stdout}\n{status.stderr}"
    assert "HTTP 200 with the token, 401 without" in status.stdout
    assert "Active:" in status.stdout  # from `ray status`
    assert "EXPOSED" not in status.stdout


def test_down_leaves_nothing_listening(cluster):
    sid = cluster.state["sid"]
    ports = cluster.service_ports()
    down = run([str(SCRIPT), "down"], cluster.env, timeout=90)
    assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
    assert not session_pids(sid)
    deadline = time.monotonic() + 10
    while (left := [s[3] for s in sockets("-lt") if port_of(s[0]) in ports]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "still listening after down:\n" + "\n".join(left)
    assert run([str(SCRIPT), "status"], cluster.env).returncode == 3
    assert not (cluster.state_dir / "node.json").exists()
