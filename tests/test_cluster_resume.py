"""A search on an `avser cluster` head survives the cluster itself: taken
down mid-search (its job killed with it) and brought up again (a new Ray
session, new ports), the same submission resumes from the checkpoints kept
under ``--storage-root`` and ends with exactly the configured trials.

`slow` (`make test-slow`), about 5 minutes. The search's ``storage_path`` is
relative on purpose: under ``ray job submit`` it resolves against the
cluster's storage root, not against the job's per-submission working dir.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from test_local_cluster import RAY, clean_env, run
from test_tune import SMOKE, _finished_trials, mlflow_client, search_runs
from two_nodes import AVSER, REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]

RUNTIME_ENV = ('{"excludes": ["out", ".venv", "mlruns", "ray_results", ".git", "bench/figures", '
               '".ray-local"]}')


def cluster(state: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([AVSER, "cluster", *args, "--state-dir", str(state)], env, timeout=180)


def submit_env(state: Path, env: dict[str, str]) -> dict[str, str]:
    lines = cluster(state, "env", env=env).stdout.splitlines()
    return {**env, **dict(line.removeprefix("export ").split("=", 1) for line in lines)}


def test_a_search_resumes_after_the_cluster_is_taken_down_and_up(tmp_path):
    state, root, name, samples = tmp_path / "state", tmp_path / "storage", "tune-down-up", 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    up = ["up", "--num-cpus", "2", "--mlflow-uri", uri, "--storage-root", str(root)]
    data = {"data.root": tmp_path / "synthetic", "data.manifest": tmp_path / "manifest.parquet",
            "data.store": tmp_path / "store", "name": name, "num_samples": samples,
            "storage_path": "ray_results",  # relative: resolved against --storage-root
            "train_overrides": "[optim.max_epochs=2, optim.batch_size=8, max_failures=0]"}
    job = [RAY, "job", "submit", "--working-dir", str(REPO), "--runtime-env-json", RUNTIME_ENV,
           "--", "python", "jobs/tune_fusion.py", "--config", SMOKE,
           *[arg for key, value in data.items() for arg in ("--set", f"{key}={value}")]]
    try:
        started = cluster(state, *up, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        first = subprocess.Popen(job, cwd=REPO, env=submit_env(state, env), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 600
        while _finished_trials(root, name) < 1 and time.monotonic() < deadline:
            assert first.poll() is None, "the submission ended before a trial finished"
            time.sleep(0.5)
        assert _finished_trials(root, name) == 1, "no trial finished within 10 minutes"
        down = cluster(state, "down", env=env)  # the job dies with its cluster
        assert down.returncode == 0, down.stdout + down.stderr
        first.wait(timeout=120)

        again = cluster(state, *up, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        second = subprocess.run(job, cwd=REPO, env=submit_env(state, env), capture_output=True,
                                text=True, timeout=900)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
        assert "resuming search" in second.stdout, second.stdout[-4000:]
    finally:
        cluster(state, "down", env=env)

    parent, children = search_runs(uri, "avser-tune-smoke", name)
    trial_ids = [c.data.tags.get("trial_id") for c in children]
    assert len(trial_ids) == samples == len(set(trial_ids))
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert len(mlflow_client(uri).search_model_versions("name = 'avser'")) == 1
    # The search's state is under the root, not in a job's working dir copy.
    assert (root / "ray_results" / name).is_dir()
