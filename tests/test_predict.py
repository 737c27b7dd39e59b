"""Model bundles, ``avser predict`` and ``avser evaluate`` (avser.predict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avser import cli
from avser.config import load_model_config
from avser.errors import AvserError
from avser.features.config import FeatureConfig, KeyframeConfig
from avser.models.factory import build_network
from avser.bundle import DEFAULT_WEIGHTS, ModelBundle, float16_state, load_bundle, save_bundle
from avser.predict import FileInputs, FileReader, _visual_tensors, predict_files, probabilities

REPO = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def tiny_bundle(kind: str = "speech", variant: str = "full", labels=LABELS) -> ModelBundle:
    model_cfg = load_model_config(REPO / "configs/model/tiny.yaml",
                                  [f"n_classes={len(labels)}", f"racnn.n_classes={len(labels)}",
                                   f"fusion.variant={variant}"])
    torch.manual_seed(0)
    net = build_network(kind, model_cfg)
    features = FeatureConfig(keyframes=KeyframeConfig(k=model_cfg.keyframes))  # as its store's
    return ModelBundle(kind, model_cfg, features, 0.5, list(labels), net.state_dict(),
                       {"note": "test"})


@pytest.fixture
def bundle_file(tmp_path) -> Path:
    return save_bundle(tiny_bundle(), tmp_path / "tiny.avser.pt")


def ravdess_files(shared_data: Path, actor: str = "Actor_16", n: int = 8) -> list[Path]:
    return sorted((shared_data / "ravdess-speech-16k" / actor).glob("*.flac"))[:n]


def test_a_bundle_round_trips_with_the_same_probabilities(bundle_file) -> None:
    original, loaded = tiny_bundle(), load_bundle(bundle_file)
    assert loaded.label_names == LABELS and loaded.model_cfg == original.model_cfg
    logmel = np.random.default_rng(0).normal(size=(3, 128, 150)).astype(np.float32)
    inputs = [FileInputs(logmel)]
    np.testing.assert_allclose(probabilities(loaded.network(), inputs, loaded),
                               probabilities(original.network(), inputs, original), rtol=1e-6)
    assert loaded.feature_cfg == original.feature_cfg


def test_float16_weights_halve_the_file_and_keep_the_probabilities(tmp_path, bundle_file) -> None:
    original = tiny_bundle()
    half = tiny_bundle()
    half.state_dict = float16_state(half.state_dict)
    half_file = save_bundle(half, tmp_path / "half.avser.pt")
    stored = torch.load(half_file, weights_only=True)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert half_file.stat().st_size < bundle_file.stat().st_size
    loaded = load_bundle(half_file)
    assert all(p.dtype == torch.float32 for p in loaded.network().parameters())
    logmel = np.random.default_rng(1).normal(size=(3, 128, 150)).astype(np.float32)
    np.testing.assert_allclose(probabilities(loaded.network(), [FileInputs(logmel)], loaded),
                               probabilities(original.network(), [FileInputs(logmel)], original),
                               atol=2e-3)


def test_a_pickled_module_is_refused(tmp_path) -> None:
    planted = tmp_path / "planted.pt"
    torch.save(torch.nn.Linear(2, 2), planted)  # a pickled class: loading it would run code
    with pytest.raises(AvserError, match="no pickled code"):
        load_bundle(planted)
    bare = tmp_path / "bare.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), bare)
    with pytest.raises(AvserError, match="re-export"):
        load_bundle(bare)
    with pytest.raises(AvserError, match="no model file"):
        load_bundle(tmp_path / "missing.pt")


def test_the_shipped_speech_model_loads_without_code() -> None:
    raw = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    assert raw["kind"] == "speech"
    bundle = load_bundle(DEFAULT_WEIGHTS)
    assert bundle.label_names == LABELS
    assert DEFAULT_WEIGHTS.stat().st_size < 16 * 2**20
    assert "licence" in bundle.card and "CC BY-NC-SA" in bundle.card["licence"]
    card = DEFAULT_WEIGHTS.with_suffix(".md")
    assert card.is_file() and "CC BY-NC-SA 4.0" in card.read_text()
    readout = bundle.speaker_readout  # the shipped model scores one speaker's clips together too
    assert readout is not None and readout["weight"].shape[0] == len(LABELS)


def test_predict_a_real_ravdess_file_with_the_shipped_model(shared_data, capsys) -> None:
    path = ravdess_files(shared_data, n=1)[0]
    assert cli.main(["predict", str(path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["label"] in LABELS
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert cli.main(["predict", str(path)]) == 0
    table = capsys.readouterr().out
    assert path.name in table and all(label in table for label in LABELS)


def test_predict_a_video_reads_its_sound(shared_data, bundle_file) -> None:
    video = shared_data / "face-videos" / "single_face.mp4"
    (result,) = predict_files([video], load_bundle(bundle_file))
    assert "sound track" in result.note
    fusion = tiny_bundle("audiovisual")
    (wav_result,) = predict_files(ravdess_files(shared_data, n=1), fusion)
    assert wav_result.note == "no video: speech alone"
    with pytest.raises(AvserError, match="video only"):
        predict_files(ravdess_files(shared_data, n=1), tiny_bundle("audiovisual", "vision"))


def test_an_audiovisual_model_reads_the_faces_of_a_video(shared_data) -> None:
    """The real face video through dlib (the default backend), as preprocessing reads it."""
    fusion = tiny_bundle("audiovisual")
    reader = FileReader(fusion)
    inputs = reader.read(shared_data / "face-videos" / "single_face.mp4")
    assert inputs.note == "" and inputs.visual is not None
    k = fusion.model_cfg.keyframes
    assert inputs.visual.landmarks.shape == (k, 68, 2) and len(inputs.visual.face_jpegs) == k
    faces, landmarks, mask = _visual_tensors([inputs, FileInputs(inputs.logmel)], fusion)
    assert mask.tolist() == [True, False] and faces[0].abs().sum() > 0 and faces[1].abs().sum() == 0
    with_face, speech_alone = probabilities(fusion.network(), [inputs, FileInputs(inputs.logmel)],
                                            fusion)
    assert not np.allclose(with_face, speech_alone)  # the faces changed the answer


def test_a_video_without_a_face_falls_back_to_speech(shared_data) -> None:
    (result,) = predict_files([shared_data / "face-videos" / "no_face.mp4"],
                              tiny_bundle("audiovisual"))
    assert result.note.startswith("no face read (no_face") and result.note.endswith("speech alone")
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(AvserError, match="no_face.mp4"):
        predict_files([shared_data / "face-videos" / "no_face.mp4"],
                      tiny_bundle("audiovisual", "vision"))


def test_a_synthetic_clip_is_read_with_the_landmarks_beside_it(tmp_path) -> None:
    from avser.data.synthetic import generate_corpus
    from avser.features.config import LandmarkConfig

    (clip,) = generate_corpus(tmp_path / "synth", 1, seed=3, progress=False)
    fusion = tiny_bundle("audiovisual")
    fusion.feature_cfg.landmarks = LandmarkConfig(backend="openface-csv")
    inputs = FileReader(fusion).read(clip.video_path)
    assert inputs.visual is not None and inputs.note == ""
    moved = tmp_path / "alone.mp4"
    moved.write_bytes(Path(clip.video_path).read_bytes())  # no CSV beside it
    alone = FileReader(fusion).read(moved)
    assert alone.visual is None and "missing_file" in alone.note


def test_predict_names_an_unsupported_file(tmp_path, bundle_file, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert cli.main(["predict", str(text), "--weights", str(bundle_file)]) == 2
    assert "notes.txt" in capsys.readouterr().err


def test_evaluate_a_small_real_manifest(shared_data, tmp_path, bundle_file, capsys) -> None:
    manifest = tmp_path / "a16.parquet"
    _write_manifest(shared_data, manifest)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--weights", str(bundle_file), "--manifest", str(manifest),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 clips" in printed and "UA" in printed and "macro-F1" in printed
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 10 and set(predictions["predicted"]) <= set(LABELS)
    np.testing.assert_allclose(predictions[[f"p_{n}" for n in LABELS]].sum(axis=1), 1.0, atol=1e-4)
    assert (out / "confusion.png").stat().st_size > 1000


def test_evaluate_refuses_a_label_set_the_model_lacks(shared_data, tmp_path, capsys) -> None:
    manifest = tmp_path / "a16.parquet"
    _write_manifest(shared_data, manifest)
    four = save_bundle(tiny_bundle(labels=["neutral", "happy", "sad", "angry"]), tmp_path / "4.pt")
    assert cli.main(["evaluate", "--weights", str(four), "--manifest", str(manifest)]) == 2
    assert "does not know" in capsys.readouterr().err


def _write_manifest(shared_data: Path, path: Path) -> None:
    """Ten clips of a speaker that no shipped or test model trains on."""
    from avser.data.manifest import write_manifest
    from avser.data.ravdess import scan_ravdess

    clips = [c for c in scan_ravdess(shared_data / "ravdess-speech-16k").clips
             if c.speaker == "Actor_16"][:10]
    write_manifest(clips, path)
