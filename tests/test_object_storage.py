"""A search whose ``storage_path`` is an object store (``s3://``), for real:
moto's S3 server on loopback stands in for the bucket, and pyarrow (Ray
Tune, Ray Train and ``avser.platform.storage``) reaches it through
``AWS_ENDPOINT_URL``, as it would reach MinIO or Ceph.

(slow) The search runs its trials with every checkpoint in the bucket, reads
the best one back for the KLDA stage and registers the model; run again, it
resumes the finished search from the bucket and registers nothing new.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_tune import REPO, SMOKE, mlflow_client, search_runs, smoke_overrides

pytestmark = pytest.mark.slow

BUCKET = "avser-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def bucket(monkeypatch):
    """An S3 endpoint on loopback with one empty bucket; the env that reaches it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()


def _keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_search_checkpoints_to_and_resumes_from_an_object_store(bucket, tmp_path):
    name, samples = "s3-search", 2
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, **bucket, "MLFLOW_TRACKING_URI": uri}
    command = [sys.executable, "jobs/tune_fusion.py", "--config", SMOKE,
               *smoke_overrides(tmp_path, name, samples),
               "--set", f"storage_path=s3://{BUCKET}/ray_results"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert "registered avser version 1" in first.stdout

    keys = _keys(f"ray_results/{name}/")
    trials = {key.split("/")[2] for key in keys if "/checkpoint_" in key}
    assert len(trials) == samples, keys
    assert any(key.endswith("hybrid_features.npz") for key in keys)  # the best trial's final
    assert not (tmp_path / "ray_results").exists()  # nothing went to local disk instead

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert f"resuming search {name} from s3://{BUCKET}/ray_results" in again.stdout
    _, children = search_runs(uri, "avser-tune-smoke", name)
    assert len(children) == samples
    assert len(mlflow_client(uri).search_model_versions("name = 'avser'")) == 1
