"""jobs/tune_fusion.py: the two-stage search, as a user runs it.

1. Submitted with `ray job submit` to a real local cluster (platform/local-cluster,
   loopback only, token auth): the job succeeds, MLflow holds a parent run with
   one child per trial, the best model is registered as `avser@candidate`, and
   the KLDA stage, from scratch on this corpus, is at least as good as the
   network head on validation.
2. (slow: 90 s on 2 cores) Trials of two DDP workers report through Ray Train;
   the search's own RACNN pretraining (`pretrain: true`) is what the trials
   start from.
3. (slow) The tune driver killed mid-search and started again finishes the
   search with exactly the configured trials and no duplicate child runs; run
   once more, the finished search registers nothing new.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_local_cluster import RAY, SCRIPT, clean_env, free_port, read_state, run, session_pids

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
SMOKE = "configs/tune_smoke.yaml"


SMOKE_TRAIN = ["optim.max_epochs=2", "optim.batch_size=8", "max_failures=0"]
# Two DDP workers on 2 CPUs leave room for the trial driver and Ray Data reads.
TWO_WORKERS = ["num_workers=2", "cpus_per_worker=0.5"]


def smoke_overrides(root: Path, name: str, samples: int, workers: int = 1) -> list[str]:
    """Absolute paths: a submitted job runs in a copy of the working dir."""
    train = SMOKE_TRAIN + (TWO_WORKERS if workers == 2 else [])
    values = {
        "data.root": root / "synthetic", "data.manifest": root / "manifest.parquet",
        "data.store": root / "store", "storage_path": root / "ray_results",
        "name": name, "num_samples": samples, "train_overrides": f"[{', '.join(train)}]",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def train_runs_of(root: Path, name: str) -> list[Path]:
    """The Ray Train runs a search started (Train-inside-Tune trials only)."""
    return sorted((root / "ray_results" / f"{name}-trials").glob(f"{name}-*"))


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def search_runs(uri: str, experiment: str, name: str):
    """(parent run, child runs) of the search called ``name``."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("avser.run_key") == name]
    assert len(parents) == 1, [r.data.tags.get("avser.run_key") for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("tune-cluster")
    temp_dir = Path(tempfile.mkdtemp(prefix="avser-tt-", dir="/tmp"))
    uri = f"sqlite:///{state_dir}/mlflow.db"
    env = clean_env(AVSER_CLUSTER_DIR=str(state_dir), MLFLOW_TRACKING_URI=uri)
    dashboard_port = free_port()
    up = run([str(SCRIPT), "up", "--num-cpus", "2", "--port", str(free_port()),
              "--dashboard-port", str(dashboard_port), "--temp-dir", str(temp_dir),
              "--worker-ports", "64"], env)
    sid = read_state(state_dir)["sid"] if up.returncode == 0 else None
    try:
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        client = clean_env(RAY_ADDRESS=f"http://127.0.0.1:{dashboard_port}", RAY_AUTH_MODE="token",
                           RAY_AUTH_TOKEN_PATH=str(state_dir / "auth_token"))
        yield {"env": client, "uri": uri, "root": state_dir}
    finally:
        run([str(SCRIPT), "down"], env, timeout=90)
        for pid in session_pids(sid) if sid else ():
            os.kill(pid, signal.SIGKILL)


def test_submitted_search_registers_the_best_model(cluster):
    name = "tune-submit"
    submit = run([RAY, "job", "submit", "--submission-id", name, "--working-dir", ".", "--",
                  "python", "jobs/tune_fusion.py", "--config", SMOKE,
                  *smoke_overrides(cluster["root"], name, samples=2)],
                 cluster["env"], timeout=900)
    assert submit.returncode == 0, f"{submit.stdout[-4000:]}\n{submit.stderr[-2000:]}"
    status = run([RAY, "job", "status", name], cluster["env"])
    assert "SUCCEEDED" in status.stdout or "succeeded" in status.stdout, status.stdout

    parent, children = search_runs(cluster["uri"], "avser-tune-smoke", name)
    assert len(children) == 2 and {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    # Stage 2 fits KLDA heads on the trials' cached features and scores them on validation.
    # Nothing makes it beat the network head in general (with `pretrain: true` on this
    # corpus it scored 0.0 against 0.33 on its few validation clips); here, from scratch, it does.
    assert metrics["best_klda_val_ua"] >= metrics["best_network_val_ua"]
    client = mlflow_client(cluster["uri"])
    best = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_config.json")).read_text())
    assert best["klda.gamma"] > 0 and "optim.lr" in best
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {f"figures/{name}.png" for name in ("optimization_history", "best_so_far",
                                               "parallel_coordinates")} <= artifacts
    # The job's console: one line per trial, Ray's log folder once, no Ray Data progress.
    assert "Execution plan" not in submit.stdout and "logging_progress" not in submit.stdout
    assert submit.stdout.count("Ray's full logs") == 1
    assert any(line.split()[:2] == ["trial", "state"] for line in submit.stdout.splitlines())
    version = client.get_model_version_by_alias("avser", "candidate")
    assert version.tags["parent_run_id"] == parent.info.run_id
    assert float(version.tags["klda_gamma"]) == pytest.approx(best["klda.gamma"])
    # Single-worker trials trained inside the trial: no Ray Train run was started.
    assert train_runs_of(cluster["root"], name) == []


@pytest.mark.slow
def test_two_worker_trials_report_to_tune_through_ray_train(tmp_path):
    """Also the search's own RACNN pretraining (Table III): the trial starts from it."""
    name = "tune-ddp"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [sys.executable, "jobs/tune_fusion.py", "--config", SMOKE,
               *smoke_overrides(tmp_path, name, samples=1, workers=2), "--set", "pretrain=true"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "RACNN pretrained (pretrain-synthetic-random-random-" in done.stdout
    parent, children = search_runs(env["MLFLOW_TRACKING_URI"], "avser-tune-smoke", name)
    assert [c.info.status for c in children] == ["FINISHED"]
    pretraining = [r for r in mlflow_client(env["MLFLOW_TRACKING_URI"]).search_runs(
        [children[0].info.experiment_id]) if r.data.tags.get("stage") == "pretrain"]
    assert len(pretraining) == 1 and pretraining[0].info.status == "FINISHED"
    assert children[0].data.params["train.init"] == f"checkpoint:{tmp_path}/ray_results/{name}-racnn"

    assert parent.data.metrics["best_network_val_ua"] >= 0
    (train_run,) = train_runs_of(tmp_path, name)  # the trial drove a Ray Train run
    assert any(train_run.glob("checkpoint_*/hybrid_features.npz"))


def _finished_trials(root: Path, name: str) -> int:
    """Trials whose training ran to its end: their final checkpoint holds the
    cached hybrid features (in the Train run of a multi-worker trial, in
    Tune's trial folder for a trial that trained itself)."""
    runs = train_runs_of(root, name) + sorted((root / "ray_results" / name).glob("*"))
    return sum(any(run.glob("checkpoint_*/hybrid_features.npz")) for run in runs)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_search_resumes_without_duplicates(tmp_path, workers):
    name, samples = "tune-resume", 3
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [sys.executable, "jobs/tune_fusion.py", "--config", SMOKE,
               *smoke_overrides(tmp_path, name, samples, workers)]
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while _finished_trials(tmp_path, name) < 1 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert first.poll() is None, "the search ended before it could be interrupted"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(5)  # let the killed driver's Ray processes go
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "resuming search" in second.stdout

    parent, children = search_runs(env["MLFLOW_TRACKING_URI"], "avser-tune-smoke", name)
    trial_ids = [c.data.tags.get("trial_id") for c in children]
    assert len(trial_ids) == samples == len(set(trial_ids))
    client = mlflow_client(env["MLFLOW_TRACKING_URI"])
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv")).read_text().splitlines()
    assert len(table) == samples + 1  # header + one row per trial
    # Run again, finished: nothing is trained or registered anew.
    third = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-2000:]
    assert len(client.search_model_versions("name = 'avser'")) == 1
    assert {c.info.run_id for c in search_runs(env["MLFLOW_TRACKING_URI"], "avser-tune-smoke", name)[1]} \
        == {c.info.run_id for c in children}
