"""avser.platform.storage: local paths and URIs for checkpoints, and the
refusal of relative paths inside a submitted job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avser.errors import ConfigError
from avser.platform import checkpoint, storage

SUBMITTED = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}, "metadata": {}})


@pytest.fixture
def no_root(monkeypatch):
    monkeypatch.delenv(storage.STORAGE_ROOT_ENV, raising=False)
    monkeypatch.delenv(storage.JOB_CONFIG_ENV, raising=False)
    return monkeypatch


def test_absolute_paths_and_uris_are_kept(no_root, tmp_path):
    assert storage.resolve(str(tmp_path)) == str(tmp_path)
    assert storage.resolve("s3://bucket/avser") == "s3://bucket/avser"
    no_root.chdir(tmp_path)
    assert storage.resolve("ray_results") == str(tmp_path / "ray_results")


def test_a_relative_path_resolves_against_the_storage_root(no_root, tmp_path):
    no_root.setenv(storage.STORAGE_ROOT_ENV, str(tmp_path / "shared"))
    no_root.setenv(storage.JOB_CONFIG_ENV, SUBMITTED)
    assert storage.resolve("ray_results") == str(tmp_path / "shared" / "ray_results")
    no_root.setenv(storage.STORAGE_ROOT_ENV, "s3://bucket/avser/")
    assert storage.resolve("ray_results") == "s3://bucket/avser/ray_results"


def test_a_relative_path_in_a_submitted_job_without_a_root_is_refused(no_root):
    no_root.setenv(storage.JOB_CONFIG_ENV, SUBMITTED)
    with pytest.raises(ConfigError, match="storage_path='ray_results' is relative.*--storage-root"):
        storage.resolve("ray_results")
    # A job submitted without a working_dir runs where it was started: allowed.
    no_root.setenv(storage.JOB_CONFIG_ENV, json.dumps({"runtime_env": {}}))
    assert storage.resolve("ray_results").endswith("/ray_results")


def test_join_works_for_paths_and_uris():
    assert storage.join("s3://bucket/a/", "b", "/c") == "s3://bucket/a/b/c"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"


def test_checkpoint_files_round_trip_through_a_file_uri(tmp_path):
    folder = tmp_path / "run" / "checkpoint_000001"
    folder.mkdir(parents=True)
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(weights, tmp_path / "model.pt")
    uri = f"file://{folder}"
    storage.upload_file(tmp_path / "model.pt", storage.join(uri, checkpoint.MODEL_FILE))
    assert storage.exists(storage.join(uri, checkpoint.MODEL_FILE))
    assert storage.is_folder(uri) and not storage.exists(storage.join(uri, "nothing.pt"))
    # A folder (or the model file itself) named by its URI loads like a local one.
    for where in (uri, storage.join(uri, checkpoint.MODEL_FILE)):
        assert torch.equal(checkpoint.load_model_state(where)["w"], weights["w"])
    with storage.local_folder(uri) as local:
        assert (local / checkpoint.MODEL_FILE).is_file()
    with pytest.raises(ConfigError, match="no model.pt"):
        checkpoint.load_model_state(f"file://{tmp_path / 'empty'}")


def test_a_ray_checkpoint_on_local_storage_keeps_its_path(tmp_path):
    from ray.train import Checkpoint

    assert storage.checkpoint_uri(Checkpoint(str(tmp_path))) == str(tmp_path)
    assert storage.checkpoint_uri(Checkpoint(f"file://{tmp_path}")) == str(tmp_path)


def test_an_unknown_scheme_names_the_ones_that_work():
    with pytest.raises(ConfigError, match="cannot open storage 'nosuch://x'.*s3://"):
        storage.filesystem("nosuch://x")


def test_paths_into_a_jobs_working_dir_copy_are_made_relative_to_it():
    copy = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_e0ed30fc4cccca3a/"
    assert storage.portable(copy + "configs/model/tiny.yaml") == "configs/model/tiny.yaml"
    assert storage.portable("/data/configs/model/tiny.yaml") == "/data/configs/model/tiny.yaml"
    assert storage.portable(3) == 3


@pytest.mark.parametrize("scheme", ["", "file://"], ids=["path", "file-uri"])
def test_one_file_of_a_checkpoint_is_read_without_the_folder(tmp_path, scheme):
    folder = tmp_path / "checkpoint_000002"
    folder.mkdir()
    features = {"train": {"hybrid": np.eye(3, dtype=np.float32), "labels": np.arange(3)}}
    checkpoint.save_hybrid_features(features, folder)
    where = f"{scheme}{folder}"
    loaded = checkpoint.load_hybrid_features(where)
    np.testing.assert_array_equal(loaded["train_hybrid"], features["train"]["hybrid"])
    np.testing.assert_array_equal(loaded["train_labels"], features["train"]["labels"])
    copy = storage.download_file(storage.join(where, checkpoint.HYBRID_FILE), tmp_path / "copy.npz")
    assert copy.read_bytes() == (folder / checkpoint.HYBRID_FILE).read_bytes()
