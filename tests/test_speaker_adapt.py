"""The speaker-adaptive readout (avser.speaker_adapt): fitting, scoring, the
bundle that carries it, and ``avser predict --one-speaker`` /
``avser evaluate --speaker-adaptive``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avser import cli
from avser.bundle import load_bundle, save_bundle
from avser.errors import AvserError
from avser.predict import FileReader, network_outputs
from avser.speaker_adapt import (PROTOCOL, SpeakerReadoutConfig, fit_speaker_readout,
                                 speaker_readout_logits)

from test_predict import LABELS, _write_manifest, ravdess_files, tiny_bundle

N_CLASSES, DIM, PER_CLASS = 4, 6, 5


def speaker_clips(rng: np.random.Generator, offset: np.ndarray, scale: float):
    """Embeddings of one speaker: class means shared by all speakers, then a
    speaker's own offset and gain (what standardising by speaker removes)."""
    class_means = np.eye(N_CLASSES, DIM) * 3.0
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    clean = class_means[labels] + rng.normal(scale=0.3, size=(len(labels), DIM))
    return clean * scale + offset, labels


def corpus(speakers: int, seed: int):
    rng = np.random.default_rng(seed)
    rows, labels, names = [], [], []
    for index in range(speakers):
        x, y = speaker_clips(rng, rng.normal(scale=10.0, size=DIM), rng.uniform(0.5, 3.0))
        rows.append(x)
        labels.append(y)
        names += [f"spk{seed}-{index}"] * len(y)
    return np.concatenate(rows), np.concatenate(labels), np.array(names)


def test_the_readout_recognises_new_speakers_whose_offsets_defeat_a_per_clip_softmax() -> None:
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, train_s = corpus(speakers=6, seed=0)
    test_x, test_y, test_s = corpus(speakers=3, seed=1)
    readout = fit_speaker_readout(train_x, train_y, train_s, N_CLASSES, SpeakerReadoutConfig())
    assert readout["weight"].shape == (N_CLASSES, DIM) and readout["bias"].shape == (N_CLASSES,)
    adaptive = speaker_readout_logits(readout, test_x, test_s, "test").argmax(1)
    per_clip = LogisticRegression(max_iter=2000).fit(train_x, train_y).predict(test_x)
    assert (adaptive == test_y).mean() > 0.95
    assert (per_clip == test_y).mean() < 0.8  # the offsets are what the readout takes out


def test_the_readout_depends_on_the_speaker_grouping() -> None:
    """A speaker's clips scored alone, or pooled with another speaker's, give
    other logits: the grouping is an input to the readout."""
    x, y, s = corpus(speakers=4, seed=2)
    readout = fit_speaker_readout(x, y, s, N_CLASSES, SpeakerReadoutConfig())
    first = s == s[0]
    alone = speaker_readout_logits(readout, x[first], s[first], "one")
    mixed = speaker_readout_logits(readout, x, np.where(first | (s == s[-1]), "a", "b"), "two")[first]
    assert not np.allclose(alone, mixed)


def test_too_few_clips_of_a_speaker_are_refused_by_name() -> None:
    x, y, s = corpus(speakers=2, seed=3)
    readout = fit_speaker_readout(x, y, s, N_CLASSES, SpeakerReadoutConfig(min_clips=8))
    speakers = s.copy()
    speakers[:3] = "lonely"
    with pytest.raises(AvserError, match="lonely.*fewer than 8 clips"):
        speaker_readout_logits(readout, x, speakers, "m.parquet")
    with pytest.raises(AvserError, match=r"classes \[3\]"):
        keep = y != 3
        fit_speaker_readout(x[keep], y[keep], s[keep], N_CLASSES, SpeakerReadoutConfig())


def readout_bundle(shared_data: Path, path: Path) -> Path:
    """A tiny speech bundle whose readout is fitted on its own embeddings of
    real clips (two actors), saved to ``path``."""
    bundle = tiny_bundle()
    reader, net = FileReader(bundle), bundle.network()
    clips = ravdess_files(shared_data, "Actor_01", 60) + ravdess_files(shared_data, "Actor_02", 60)
    _, embedded = network_outputs(net, [reader.read(p) for p in clips], bundle)
    labels = np.array([int(p.name.split("-")[2]) - 1 for p in clips])
    speakers = np.array([p.parent.name for p in clips])
    bundle.speaker_readout = fit_speaker_readout(embedded, labels, speakers, len(LABELS),
                                                 SpeakerReadoutConfig())
    return save_bundle(bundle, path)


@pytest.fixture
def readout_file(shared_data, tmp_path) -> Path:
    return readout_bundle(shared_data, tmp_path / "adaptive.avser.pt")


def test_the_readout_travels_in_the_bundle_as_plain_tensors(readout_file) -> None:
    raw = torch.load(readout_file, weights_only=True)
    assert set(raw["speaker_readout"]) == {"weight", "bias", "min_clips"}
    loaded = load_bundle(readout_file)
    assert loaded.speaker_readout["weight"].shape == (len(LABELS), raw["speaker_readout"]["weight"].shape[1])


def test_predict_one_speaker_scores_the_files_together(shared_data, readout_file, capsys) -> None:
    clips = [str(p) for p in ravdess_files(shared_data, "Actor_16", 10)]
    assert cli.main(["predict", *clips, "--weights", str(readout_file), "--one-speaker",
                     "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 10 and all(PROTOCOL in r["note"] for r in results)
    for result in results:
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert cli.main(["predict", *clips[:3], "--weights", str(readout_file), "--one-speaker"]) == 2
    assert "fewer than 8 clips" in capsys.readouterr().err


def test_evaluate_speaker_adaptive_is_reported_as_its_own_protocol(shared_data, tmp_path,
                                                                    readout_file, capsys) -> None:
    manifest = tmp_path / "a16.parquet"
    _write_manifest(shared_data, manifest)
    assert cli.main(["evaluate", "--weights", str(readout_file), "--manifest", str(manifest),
                     "--speaker-adaptive"]) == 0
    assert f"({PROTOCOL})" in capsys.readouterr().out
    assert cli.main(["evaluate", "--weights", str(readout_file), "--manifest", str(manifest)]) == 0
    assert "(per clip)" in capsys.readouterr().out


def test_a_model_without_the_readout_says_so(shared_data, tmp_path, capsys) -> None:
    plain = save_bundle(tiny_bundle(), tmp_path / "plain.avser.pt")
    manifest = tmp_path / "a16.parquet"
    _write_manifest(shared_data, manifest)
    assert cli.main(["evaluate", "--weights", str(plain), "--manifest", str(manifest),
                     "--speaker-adaptive"]) == 2
    assert "no speaker-adaptive readout" in capsys.readouterr().err


def test_the_shipped_model_scores_one_speakers_clips_together(shared_data, capsys) -> None:
    clips = [str(p) for p in ravdess_files(shared_data, "Actor_16", 8)]
    assert cli.main(["predict", *clips, "--one-speaker", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 8 and all(PROTOCOL in r["note"] for r in results)
