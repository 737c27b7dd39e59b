"""avser.platform.tracking against a real sqlite MLflow store in a temp folder."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mlflow
import yaml

from avser.platform import registry, runs, tracking

EXPERIMENT = "avser-test"
N_CLASSES = 4
BATCH = 3
SEED = 0
REPO = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "happy", "sad", "angry"]


@dataclass
class TinyOptim:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)


@dataclass
class TinyConfig:
    name: str = "tiny"
    epochs: int = 2
    optim: TinyOptim = field(default_factory=TinyOptim)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module: MLflow's first connection is slow."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield root


def tiny_bundle_file(folder: Path, kind: str, seed: int = SEED) -> Path:
    """A real (tiny, untrained) network saved as a bundle, as a training saves it."""
    from avser.bundle import ModelBundle, save_bundle
    from avser.config import load_model_config
    from avser.features.config import FeatureConfig, KeyframeConfig
    from avser.models.factory import build_network

    model_cfg = load_model_config(REPO / "configs/model/tiny.yaml",
                                  [f"n_classes={N_CLASSES}", f"racnn.n_classes={N_CLASSES}"])
    torch.manual_seed(seed)
    net = build_network(kind, model_cfg)
    bundle = ModelBundle(kind, model_cfg, FeatureConfig(keyframes=KeyframeConfig(k=model_cfg.keyframes)),
                         0.5, LABELS, net.state_dict(), {"note": "test"})
    return save_bundle(bundle, folder / f"{kind}-{seed}.avser.pt")


def fitted_head_file(folder: Path) -> tuple[Path, np.ndarray, object]:
    from avser.heads import KLDAConfig, fit_klda_head, save_head

    rng = np.random.default_rng(SEED)
    features = rng.standard_normal((40, 6))
    head = fit_klda_head(features, np.arange(40) % N_CLASSES, KLDAConfig())
    path = folder / "klda_head.npz"
    save_head(head, path)
    return path, features, head


def network_logits(bundle_path: Path, example: dict[str, np.ndarray]) -> np.ndarray:
    from avser.bundle import load_bundle

    with torch.no_grad():
        out = load_bundle(bundle_path).network()(**{k: torch.from_numpy(v) for k, v in example.items()})
    return (out[0] if isinstance(out, tuple) else out).numpy()


def batch_of(kind: str, bundle_path: Path) -> dict[str, np.ndarray]:
    from avser.bundle import load_bundle
    from avser.models.factory import example_inputs

    example = example_inputs(kind, load_bundle(bundle_path).model_cfg)
    rng = np.random.default_rng(SEED)
    batch = {k: np.repeat(v, BATCH, axis=0) for k, v in example.items()}
    for key in ("speech", "faces", "landmarks"):
        if key in batch:
            batch[key] = rng.standard_normal(batch[key].shape).astype(np.float32)
    return batch


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_default_uri_is_local_sqlite(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns").is_dir()
    assert tracking.artifact_root(uri) == tmp_path.resolve() / "mlruns" / "artifacts"
    assert tracking.artifact_root("http://mlflow:5000") is None


def test_uri_from_environment(store):
    assert tracking.tracking_uri() == os.environ["MLFLOW_TRACKING_URI"]
    assert tracking.artifact_root() == store / "artifacts"


def test_params_metrics_and_artifacts_are_stored(store, tmp_path):
    run_id = tracking.start_run(EXPERIMENT, "params-metrics", "params-metrics", {"stage": "test"})
    logged = tracking.log_params(run_id, TinyConfig())
    tracking.log_metrics(run_id, {"loss": 1.5, "ua": np.float32(0.25)}, step=0)
    figure = tracking.log_figure_file(run_id, _png(tmp_path / "confusion.png"), "figures")
    per_class = pd.DataFrame({"label": [0, 1], "ua": [0.5, 0.7]})
    table = tracking.log_table(run_id, per_class, "per_class.csv")
    as_json = tracking.log_dict(run_id, {"labels": ["angry", "calm"]}, "labels.json", "meta")
    tracking.finish_run(run_id)

    mlflow_client = tracking.client()
    run = mlflow_client.get_run(run_id)
    assert logged["optim.lr"] == "0.001" and logged["optim.betas"] == "[0.9, 0.999]"
    assert run.data.params == logged
    assert run.data.metrics == {"loss": 1.5, "ua": 0.25}
    assert run.data.tags["stage"] == "test"
    assert run.info.status == "FINISHED"
    folders = ("figures", "meta", "")
    stored = {a.path for d in folders for a in mlflow_client.list_artifacts(run_id, d)}
    assert {figure, table, as_json} <= stored
    local_png = Path(mlflow_client.download_artifacts(run_id, figure, str(tmp_path / "dl")))
    assert local_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # artifacts sit next to the database, under the experiment's own folder
    assert run.info.artifact_uri.startswith((store / "artifacts" / EXPERIMENT).as_uri())


def test_params_of_nested_configs_are_flattened():
    nested = {"train": TinyConfig(), "model": {"size": "tiny", "dims": (2, 3)}}
    values = tracking.param_values(nested)
    assert values["train.optim.lr"] == "0.001"
    assert values["train.optim.betas"] == "[0.9, 0.999]"
    assert values["model.dims"] == "[2, 3]"


def test_long_param_values_are_truncated(store):
    run_id = tracking.start_run(EXPERIMENT, "long-param", "long-param")
    logged = tracking.log_params(run_id, {"notes": "x" * (tracking.MAX_PARAM_VAL_LENGTH + 10)})
    assert len(logged["notes"]) == tracking.MAX_PARAM_VAL_LENGTH
    tracking.log_params(run_id, {"notes": "x" * (tracking.MAX_PARAM_VAL_LENGTH + 10)})


def test_start_run_with_same_key_resumes(store):
    run_id = tracking.start_run(EXPERIMENT, "trial-0001", "trial-0001", {"attempt": 1})
    tracking.log_params(run_id, TinyConfig())
    for step in range(2):
        tracking.log_metrics(run_id, {"loss": 1.0 / (step + 1)}, step=step)
    tracking.finish_run(run_id, "FAILED")

    resumed = tracking.start_run(EXPERIMENT, "trial-0001", "trial-0001", {"attempt": 2})
    assert resumed == run_id == tracking.find_run(EXPERIMENT, "trial-0001")
    tracking.log_params(run_id, TinyConfig())  # same config again: no error
    tracking.log_metrics(run_id, {"loss": 0.25}, step=2)
    tracking.finish_run(run_id)

    mlflow_client = tracking.client()
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    run = mlflow_client.get_run(run_id)
    assert run.data.tags["attempt"] == "2" and run.info.status == "FINISHED"
    assert tracking.find_run(EXPERIMENT, "trial-0002") is None
    assert tracking.find_run("no-such-experiment", "trial-0001") is None


def test_param_conflict_is_a_clear_error(store):
    run_id = tracking.start_run(EXPERIMENT, "conflict", "conflict")
    tracking.log_params(run_id, TinyConfig())
    clear = r"optim\.lr: '0\.001' -> '0\.01'.*new run"
    with pytest.raises(tracking.ParamConflictError, match=clear):
        tracking.log_params(run_id, TinyConfig(optim=TinyOptim(lr=0.01), epochs=3))
    # nothing of the rejected config was logged, not even the unchanged keys
    assert tracking.client().get_run(run_id).data.params["optim.lr"] == "0.001"


def test_child_run_carries_parent_run_id(store):
    parent = tracking.start_run(EXPERIMENT, "tune-parent", "tune-parent")
    child = tracking.start_run(EXPERIMENT, "tune-parent/trial-1", "trial-1", parent_run_id=parent)
    tags = tracking.client().get_run(child).data.tags
    assert child != parent
    assert tags["mlflow.parentRunId"] == parent
    assert tags[tracking.RUN_KEY_TAG] == "tune-parent/trial-1"


def test_run_key_with_quotes_is_refused(store):
    with pytest.raises(tracking.AvserError, match="quotes"):
        tracking.start_run(EXPERIMENT, "it's", "bad")


def test_a_version_loads_through_avser_and_mlflow_alike(store, tmp_path):
    import avser

    bundle = tiny_bundle_file(tmp_path, "audiovisual")
    head_path, features, head = fitted_head_file(tmp_path)
    batch = batch_of("audiovisual", bundle)
    expected = network_logits(bundle, batch)
    run_id = tracking.start_run(EXPERIMENT, "fusion", "fusion")
    version = registry.register_version(run_id, "avser-test", bundle, {"protocol": "random"},
                                        head_path=head_path, card="# a card",
                                        metrics={"test_ua": 0.5})
    served = registry.load_registered("avser-test", "candidate")  # mlflow.pyfunc.load_model
    assert served.metadata.get_input_schema().input_names() == ["speech", "faces", "landmarks",
                                                                  "visual_mask"]
    np.testing.assert_allclose(served.predict(batch), expected, rtol=0, atol=1e-5)
    loaded = avser.load_model("models:/avser-test@candidate")  # plain data, no pickle
    with torch.no_grad():
        logits = loaded.bundle.network()(**{k: torch.from_numpy(v) for k, v in batch.items()})[0]
    np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(loaded.klda_head.predict_proba(features), head.predict_proba(features))
    record = tracking.client().get_model_version("avser-test", str(version))
    assert record.description == "# a card"
    assert record.tags["protocol"] == "random" and record.tags["metric.test_ua"] == "0.5000"
    assert record.tags[registry.FORMAT_TAG] == registry.MODEL_FORMAT and record.run_id == run_id


def test_speech_versions_and_alias_promotion(store, tmp_path):
    first_bundle, second_bundle = (tiny_bundle_file(tmp_path, "speech", s) for s in (1, 2))
    speech = batch_of("speech", first_bundle)
    run_a = tracking.start_run(EXPERIMENT, "racnn-a", "racnn-a")
    run_b = tracking.start_run(EXPERIMENT, "racnn-b", "racnn-b")
    first = registry.register_version(run_a, "avser-racnn-test", first_bundle, {})
    second = registry.register_version(run_b, "avser-racnn-test", second_bundle, {})
    registry.set_alias("avser-racnn-test", "champion", first)
    assert second == first + 1
    aliases = tracking.client().get_registered_model("avser-racnn-test").aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {"candidate": second, "champion": first}
    for alias, bundle in (("champion", first_bundle), ("candidate", second_bundle), (first, first_bundle)):
        predicted = registry.load_registered("avser-racnn-test", alias).predict(speech)
        np.testing.assert_allclose(predicted, network_logits(bundle, speech), rtol=0, atol=1e-5)
    # the logged model is filed under the run's experiment, not MLflow's Default
    version = tracking.client().get_model_version("avser-racnn-test", str(first))
    logged = tracking.client().get_logged_model(version.source.removeprefix("models:/"))
    assert logged.experiment_id == tracking.get_or_create_experiment(EXPERIMENT)
    assert logged.artifact_location.startswith((store / "artifacts").as_uri())


def test_missing_model_input_is_named(store, tmp_path):
    bundle = tiny_bundle_file(tmp_path, "audiovisual")
    run_id = tracking.start_run(EXPERIMENT, "fusion-missing", "fusion-missing")
    uri = registry.log_bundle_model(run_id, bundle)
    wrapper = registry.load_model(uri).unwrap_python_model()
    with pytest.raises(tracking.AvserError, match="landmarks"):
        wrapper.predict(None, {"speech": batch_of("audiovisual", bundle)["speech"]})


def test_a_planted_pickle_and_the_old_format_are_refused(store, tmp_path):
    import avser

    bundle = tiny_bundle_file(tmp_path, "speech")
    run_id = tracking.start_run(EXPERIMENT, "planted", "planted")
    uri = registry.log_bundle_model(run_id, bundle)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "m")))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    planted = local / meta["flavors"]["python_function"]["artifacts"]["bundle"]["path"]
    torch.save(nn.Linear(2, 2), planted)  # a pickled module where the state dict was
    with pytest.raises(tracking.AvserError, match="no pickled code"):
        avser.load_model(str(local))
    # A version from before: its pyfunc held a pickled torch module.
    meta["flavors"]["python_function"]["artifacts"] = {"torch_module": {"path": "artifacts/module.pt"}}
    (local / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(tracking.AvserError, match="old model format.*re-register"):
        avser.load_model(str(local))


def test_git_commit(tmp_path):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
    )
    if head.returncode == 0:
        assert runs.git_commit() == head.stdout.strip()
    assert runs.git_commit(tmp_path) == "unknown"


def test_data_hash_follows_path_size_and_mtime(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    other = tmp_path / "b.wav"
    other.write_bytes(b"RIFF")
    first = runs.data_hash([audio, other])
    assert runs.data_hash([other, audio]) == first  # order does not matter
    assert runs.data_hash(tmp_path) == first  # a folder hashes its files
    os.utime(audio, ns=(1_000_000_000, 1_000_000_000))
    assert runs.data_hash([audio, other]) != first
    changed = runs.data_hash([audio, other])
    audio.write_bytes(b"RIFF....")
    os.utime(audio, ns=(1_000_000_000, 1_000_000_000))
    assert runs.data_hash([audio, other]) != changed
    assert runs.data_hash(tmp_path / "missing.wav") != runs.data_hash(audio)


def test_data_hash_of_a_manifest(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    manifest = pd.DataFrame(
        {
            "clip_id": ["c2", "c1"],
            "speaker": ["s1", "s2"],
            "label": [0, 1],
            "audio_path": [str(audio), str(audio)],
            "video_path": [None, None],
        }
    )
    first = runs.data_hash(manifest)
    assert runs.data_hash(manifest.iloc[::-1]) == first  # row order does not matter
    relabelled = manifest.assign(label=[1, 1])
    assert runs.data_hash(relabelled) != first
    audio.write_bytes(b"RIFF more")
    assert runs.data_hash(manifest) != first


def test_standard_tags():
    tags = runs.standard_tags("speaker", "ravdess", "abc123", {"config_hash": 42})
    assert tags["avser.protocol"] == "speaker"
    assert tags["avser.corpus"] == "ravdess"
    assert tags["avser.data_hash"] == "abc123"
    assert tags["config_hash"] == "42"
    assert tags["mlflow.source.git.commit"] == runs.git_commit()


def test_a_run_registers_at_most_one_version(store, tmp_path):
    bundle = tiny_bundle_file(tmp_path, "speech")
    run_id = tracking.start_run(EXPERIMENT, "idempotent", "idempotent")
    first = registry.register_version(run_id, "avser-once", bundle, {"stage": "x"})
    again = registry.register_version(run_id, "avser-once", bundle, {"stage": "x"})
    assert again == first
    versions = tracking.client().search_model_versions("name='avser-once'")
    assert [int(v.version) for v in versions] == [first]
    other_run = tracking.start_run(EXPERIMENT, "idempotent-2", "idempotent-2")
    assert registry.register_version(other_run, "avser-once", bundle, {}) == first + 1