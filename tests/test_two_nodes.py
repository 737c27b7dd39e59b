"""Two Ray nodes for real: a head and a worker node in two network namespaces,
started with `avser cluster up` and `avser cluster join` (tests/two_nodes.py).

All `slow` (`make test-slow`), about 15 minutes:

- The worker node joins: the cluster has two nodes and a job's tasks run on both.
- Without the token the job server refuses a request and a submission.
- A fusion training with 2 DDP workers (gloo), one on each node, trains
  to its end, and while it runs nothing in either namespace listens beyond
  loopback and that namespace's address; the DDP rendezvous listens on rank
  0's node address only (not on the wildcard, as Ray's gRPC servers do).
- The worker node killed mid-training and rejoined: the run resumes from its
  last checkpoint into the same MLflow run and registers one version.
- The same for a search of three two-worker trials: it ends with exactly
  three trials, one child run each, and one registered version.

Both nodes' jobs log to one MLflow server on the head's address (with
MLflow's basic auth, as beyond loopback it must be); the tests read its
SQLite backend directly, since the host's own namespace cannot reach the
namespaces' addresses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from two_nodes import RAY, REPO, clean_env, require_namespaces, two_namespaces

# The job's code; the runtime env names no MLflow URI: jobs inherit the cluster's.
RUNTIME_ENV = ('{"excludes": ["out", ".venv", "mlruns", "ray_results", ".git", "bench/figures", '
               '".ray-local"]}')

# In `make test-slow`: with them `make test` would pass its 15-minute budget.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

HELLO = """
import ray
ray.init()
@ray.remote(num_cpus=1)
def where():
    import time
    time.sleep(1)
    return ray.util.get_node_ip_address()
print("nodes:", sorted(set(ray.get([where.remote() for _ in range(4)]))))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_namespaces()
    root = tmp_path_factory.mktemp("two-nodes")
    with two_namespaces(root) as (head, worker):
        server = head.avser("up", "--host", head.address, command="mlflow")
        assert server.returncode == 0, server.stdout + server.stderr
        mlflow_env = dict(line.removeprefix("export ").split("=", 1)
                          for line in head.avser("env", command="mlflow").stdout.splitlines())
        assert mlflow_env["MLFLOW_TRACKING_URI"].startswith(f"http://{head.address}:")
        # Every Ray process of both nodes, and so every job, inherits the credentials.
        up = head.avser("up", "--node-address", head.address, "--num-cpus", "1",
                        "--mlflow-uri", mlflow_env["MLFLOW_TRACKING_URI"], env=mlflow_env)
        assert up.returncode == 0, up.stdout + up.stderr
        token = head.state_dir / "auth_token"
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        (worker.state_dir / "auth_token").write_text(token.read_text())
        join = worker.avser("join", "--address", head.state()["head"], "--node-address",
                            worker.address, "--num-cpus", "1", env=mlflow_env)
        assert join.returncode == 0, join.stdout + join.stderr
        # The token travels in a file: no process of either node has it on its command line.
        secret = token.read_text().strip()
        for node in (head, worker):
            for pid in _pids(node):
                assert secret not in _cmdline(pid), f"token on the command line of pid {pid}"
        yield {"head": head, "worker": worker, "root": root, "mlflow_env": mlflow_env,
               "mlflow_db": f"sqlite:///{head.state_dir / 'mlflow.db'}"}


def _pids(node) -> list[int]:
    from avser.platform.nodes import session_pids

    return session_pids(node.state()["sid"])


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def client_env(head, **extra):
    env = clean_env(**extra)
    for line in head.avser("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def test_the_worker_node_joins_and_runs_tasks(cluster, tmp_path):
    head, worker = cluster["head"], cluster["worker"]
    deadline = time.monotonic() + 60  # the autoscaler's view lags the join by seconds
    while (status := head.avser("status")).stdout.count("node_") < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert status.stdout.count("node_") >= 2, status.stdout
    (tmp_path / "hello.py").write_text(HELLO)
    done = head.run([RAY, "job", "submit", "--working-dir", str(tmp_path), "--", "python", "hello.py"],
                    env=client_env(head), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"nodes: ['{head.address}', '{worker.address}']" in done.stdout


def test_requests_without_the_token_are_refused(cluster, tmp_path):
    head = cluster["head"]
    url = head.state()["ports"]["dashboard"]
    probe = head.run(["python3", "-c", (
        "import urllib.request, urllib.error\n"
        f"try:\n urllib.request.urlopen('http://{head.address}:{url}/api/jobs/', timeout=5); print(200)\n"
        "except urllib.error.HTTPError as e: print(e.code)")])
    assert probe.stdout.strip() == "401", probe.stdout + probe.stderr
    env = client_env(head)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key)
    (tmp_path / "hello.py").write_text(HELLO)
    refused = head.run([RAY, "job", "submit", "--working-dir", str(tmp_path), "--", "python", "hello.py"],
                       env=env, timeout=120)
    assert refused.returncode != 0
    assert "nodes:" not in refused.stdout


def _allowed(address: str, node_address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    # Every interface of the namespace = loopback + the node's address (IPv6 is off).
    return host in ("0.0.0.0", "*", node_address) or host.startswith("127.")


def test_ddp_training_spans_both_nodes_and_listens_only_on_their_addresses(cluster):
    head, worker, root = cluster["head"], cluster["worker"], cluster["root"]
    for node in (head, worker):
        interfaces = node.run(["ip", "-o", "addr", "show"]).stdout
        assert set(a.split("/")[0] for a in interfaces.split() if a[0].isdigit() and "/" in a) \
            == {"127.0.0.1", node.address}
    uri = cluster["mlflow_db"]
    env = client_env(head)
    store = _smoke_store(root)
    job = head.popen([RAY, "job", "submit", "--working-dir", str(REPO), "--runtime-env-json",
                      RUNTIME_ENV, "--", "python", "jobs/train_fusion.py", "--store", str(store),
                      "--config", "configs/train_smoke.yaml", "--num-workers", "2",
                      "--set", "cpus_per_worker=0.75", "--set", f"storage_path={root}/ray",
                      "--set", "optim.max_epochs=2", "--set", "experiment=two-nodes"],
                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = {head.namespace: set(), worker.namespace: set()}
    while job.poll() is None:
        for node in (head, worker):
            seen[node.namespace].update(node.listening())
        time.sleep(0.5)
    output = job.stdout.read()
    assert job.returncode == 0, output[-4000:]
    assert f"ip={worker.address}" in output  # a Train worker ran on the worker node
    for node in (head, worker):
        bad = [a for a in seen[node.namespace] if not _allowed(a, node.address)]
        assert not bad, f"{node.namespace} listened beyond loopback and {node.address}: {bad}"
    # Ray's own gRPC servers listen on the wildcard (upstream); the DDP rendezvous must not.
    rendezvous = re.search(r"DDP rendezvous listening on (\S+):(\d+)", output)
    assert rendezvous, output[-4000:]
    address, port = rendezvous.groups()
    rank0 = next(node for node in (head, worker) if node.address == address)
    assert [a for a in seen[rank0.namespace] if a.endswith(f":{port}")] == [f"{address}:{port}"]

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]


def _epochs_logged(uri: str, experiment: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception:  # the store is created by the job's first run
        return 0
    if found is None:
        return 0
    runs = client.search_runs([found.experiment_id])
    steps = [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "epoch")]
    return max(steps) + 1 if steps else 0


def _smoke_store(root):
    """A small feature store, made outside the namespaces (no Ray cluster needed)."""
    code = ("import sys; from avser.platform.cluster import init_ray; "
            "from avser.platform.dataprep import prepare_store; "
            "from avser.platform.config import DataPrepConfig; init_ray(num_cpus=2); "
            f"prepare_store(DataPrepConfig(corpus='synthetic', root='{root}/synthetic', synth_clips=24, "
            f"manifest='{root}/manifest.parquet', store='{root}/store', "
            f"preprocess_config='{REPO}/configs/preprocess_synthetic.yaml'), progress=False)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "store"


class Lines:
    """A process's output lines, read as they come (a pipe that is never read fills up)."""

    def __init__(self, process: subprocess.Popen) -> None:
        import threading

        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)



def test_training_survives_the_death_of_the_worker_node(cluster):
    """Kill every process of the worker node mid-training, bring the node back:
    Ray Train restores the last checkpoint and the run ends in the same MLflow
    run with one registered version. The cost goes to node_failure.json."""
    import json

    head, root = cluster["head"], cluster["root"]
    uri = cluster["mlflow_db"]
    store, epochs = _smoke_store(root), 30
    job = head.popen([RAY, "job", "submit", "--working-dir", str(REPO), "--runtime-env-json",
                      RUNTIME_ENV, "--", "python", "jobs/train_fusion.py", "--store", str(store),
                      "--config", "configs/train_smoke.yaml", "--num-workers", "2",
                      "--set", "cpus_per_worker=0.75", "--set", f"storage_path={root}/ray-failure",
                      "--set", f"optim.max_epochs={epochs}", "--set", f"optim.patience={epochs}",
                      "--set", "max_failures=3", "--set", "experiment=two-nodes-failure"],
                     env=client_env(head), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = Lines(job)
    deadline = time.monotonic() + 400
    # Killed once epoch 1 is logged: Ray Train has registered epoch 0's checkpoint
    # (it registers a reported one at its next poll) and epoch 2 is under way.
    while _epochs_logged(uri, "two-nodes-failure") < 2 and time.monotonic() < deadline:
        assert job.poll() is None, lines.text()[-4000:]
        time.sleep(0.5)
    assert job.poll() is None, "training ended before the kill:\n" + lines.text()[-4000:]
    killed_wall = time.time()
    _kill_and_rejoin(cluster)
    job.wait(timeout=600)
    finished_wall = time.time()
    lines.thread.join(timeout=10)
    assert job.returncode == 0, lines.text()[-6000:]

    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("two-nodes-failure").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # the same MLflow run, resumed
    run_id = runs[0].info.run_id
    epochs_logged = client.get_metric_history(run_id, "epoch")
    assert sorted({int(m.step) for m in epochs_logged}) == list(range(epochs))
    restores = client.get_metric_history(run_id, "restored_at_epoch")
    assert restores, "the run never resumed from a checkpoint:\n" + lines.text()[-4000:]
    resumed = min(restores, key=lambda m: m.timestamp)
    assert resumed.value >= 1  # from a checkpoint, not from scratch
    before = [m for m in epochs_logged if m.timestamp / 1000 < killed_wall]
    in_progress = max(int(m.step) for m in before) + 1  # the epoch the kill interrupted
    cost = {"seconds_kill_to_resumed": round(resumed.timestamp / 1000 - killed_wall, 1),
            "resumed_at_epoch": int(resumed.value), "interrupted_epoch": in_progress,
            "epochs_redone": in_progress - int(resumed.value) + 1,
            "seconds_kill_to_finished": round(finished_wall - killed_wall, 1)}
    (root / "node_failure.json").write_text(json.dumps(cost))
    print("node failure cost:", cost)
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    assert len(versions) == 1


def _kill_and_rejoin(cluster) -> None:
    """SIGKILL every process of the worker node; 5 s later it joins again."""
    from two_nodes import _pids_in_namespace

    head, worker = cluster["head"], cluster["worker"]
    for pid in _pids(worker) + _pids_in_namespace(worker.namespace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (worker.state_dir / "node.json").unlink()
    time.sleep(5)
    rejoin = worker.avser("join", "--address", head.state()["head"], "--node-address",
                          worker.address, "--num-cpus", "1", env=cluster["mlflow_env"])
    assert rejoin.returncode == 0, rejoin.stdout + rejoin.stderr


def test_a_search_survives_the_death_of_the_worker_node(cluster):
    """A search of three trials, each a two-worker DDP training across the
    nodes; the worker node killed once the first trial finished, then
    rejoined: the search ends with exactly three trials, one child run
    each, and one registered version."""
    from test_tune import SMOKE, _finished_trials

    head, root = cluster["head"], cluster["root"] / "search"
    name, samples = "two-nodes-search", 3
    train = "[optim.max_epochs=4, optim.batch_size=8, max_failures=3, num_workers=2, cpus_per_worker=0.75]"
    values = {"data.root": root / "synthetic", "data.manifest": root / "manifest.parquet",
              "data.store": cluster["root"] / "store", "storage_path": root / "ray_results",
              "name": name, "num_samples": samples, "train_overrides": train,
              "experiment": "two-nodes-search", "max_failures": 3}
    job = head.popen([RAY, "job", "submit", "--working-dir", str(REPO), "--runtime-env-json",
                      RUNTIME_ENV, "--", "python", "jobs/tune_fusion.py", "--config", SMOKE,
                      *[arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]],
                     env=client_env(head), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = Lines(job)
    deadline = time.monotonic() + 600
    while _finished_trials(root, name) < 1 and time.monotonic() < deadline:
        assert job.poll() is None, lines.text()[-4000:]
        time.sleep(0.5)
    assert job.poll() is None, "the search ended before the kill:\n" + lines.text()[-4000:]
    time.sleep(3)  # into the second trial
    _kill_and_rejoin(cluster)
    job.wait(timeout=900)
    lines.thread.join(timeout=10)
    assert job.returncode == 0, lines.text()[-6000:]

    from test_tune import search_runs

    parent, children = search_runs(cluster["mlflow_db"], "two-nodes-search", name)
    trial_ids = [c.data.tags.get("trial_id") for c in children]
    assert len(trial_ids) == samples == len(set(trial_ids)), trial_ids
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    import mlflow

    client = mlflow.MlflowClient(cluster["mlflow_db"])
    versions = [v for v in client.search_model_versions("name = 'avser'") if v.tags.get("search") == name]
    assert len(versions) == 1
