"""The synthetic audio-visual corpus: real media files, exact landmarks, learnable labels."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from avser.config import from_dict, to_dict
from avser.data.manifest import clips_to_frame
from avser.data.synthetic import (
    CORPUS_FILE,
    EMOTIONS,
    SynthConfig,
    generate_corpus,
    openface_header,
    scan_synthetic,
)
from avser.errors import AvserError, ConfigError

N_CLIPS = 12
AAC_FRAME = 1024  # the encoder pads the last frame up to this many samples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, generate_corpus(root, N_CLIPS, seed=0, progress=False)


def _meta(root: Path) -> dict:
    return json.loads((root / CORPUS_FILE).read_text())


def _n_frames(root: Path) -> dict[str, int]:
    return {c["clip_id"]: c["n_frames"] for c in _meta(root)["clips"]}


def decode_audio(path: str) -> tuple[np.ndarray, dict]:
    """Mono samples, and what the audio stream says about itself."""
    with av.open(path) as container:
        stream = container.streams.audio[0]
        info = {
            "codec": stream.codec_context.name,
            "rate": stream.codec_context.sample_rate,
            "channels": stream.codec_context.layout.nb_channels,
        }
        return np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)]), info


def read_landmarks(path: str) -> np.ndarray:
    """(T, 68, 2) from an OpenFace CSV."""
    frame = pd.read_csv(path, skipinitialspace=True)
    xs = frame[[f"x_{i}" for i in range(68)]].to_numpy()
    ys = frame[[f"y_{i}" for i in range(68)]].to_numpy()
    return np.stack([xs, ys], axis=-1)


# ------------------------------------------------------------------ files


def test_writes_media_landmarks_and_corpus_json(corpus):
    root, clips = corpus
    assert len(clips) == N_CLIPS
    names = {p.name for p in root.iterdir()}
    media = {f"{c.clip_id}{suffix}" for c in clips for suffix in (".mp4", ".csv")}
    assert names == {CORPUS_FILE} | media
    meta = _meta(root)
    assert meta["seed"] == 0 and meta["emotions"] == list(EMOTIONS)
    assert [c["clip_id"] for c in meta["clips"]] == [c.clip_id for c in clips]
    assert meta["config"]["fps"] == SynthConfig().fps


def test_labels_are_balanced_over_speakers(corpus):
    _, clips = corpus
    for clip in clips:
        assert clip.corpus == "synthetic"
        assert clip.label_name == EMOTIONS[clip.label]
        assert clip.audio_path == clip.video_path and clip.video_path.endswith(".mp4")
        assert clip.landmarks_path.endswith(".csv")
    # Each block of six clips is one speaker saying every emotion once.
    assert sorted(c.label for c in clips) == sorted(list(range(6)) * 2)
    assert {c.speaker for c in clips} == {"spk01", "spk02"}
    assert len({c.clip_id for c in clips}) == N_CLIPS


def test_mp4_holds_h264_video_of_the_planned_length(corpus):
    root, clips = corpus
    cfg, n_frames = SynthConfig(), _n_frames(root)
    for clip in clips:
        with av.open(clip.video_path) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f for f in container.decode(stream)]
        assert len(frames) == n_frames[clip.clip_id]
        assert (frames[0].width, frames[0].height) == (cfg.width, cfg.height)
        assert frames[0].format.name == "yuv420p"
        assert cfg.duration_s[0] <= len(frames) / cfg.fps <= cfg.duration_s[1]


def test_mp4_holds_aac_audio_as_long_as_the_video(corpus):
    root, clips = corpus
    cfg, n_frames = SynthConfig(), _n_frames(root)
    for clip in clips:
        samples, info = decode_audio(clip.audio_path)
        assert info == {"codec": "aac", "rate": cfg.sample_rate, "channels": 1}
        expected = n_frames[clip.clip_id] * cfg.sample_rate // cfg.fps
        assert expected <= samples.size < expected + AAC_FRAME
        assert 1e-3 < np.sqrt(np.mean(samples**2)) and np.abs(samples).max() <= 1.0


def test_landmark_csv_is_openface_feature_extraction_format(corpus):
    root, clips = corpus
    cfg, n_frames = SynthConfig(), _n_frames(root)
    for clip in clips:
        header = Path(clip.landmarks_path).read_text().splitlines()[0]
        assert header == openface_header()
        assert header.startswith("frame, face_id, timestamp, confidence, success, x_0, x_1")
        assert header.endswith("y_66, y_67")
        table = pd.read_csv(clip.landmarks_path, skipinitialspace=True)
        assert len(table) == n_frames[clip.clip_id]
        assert table["frame"].tolist() == list(range(1, len(table) + 1))
        np.testing.assert_allclose(table["timestamp"], (table["frame"] - 1) / cfg.fps, atol=1e-3)
        assert (table["success"] == 1).all() and (table["face_id"] == 0).all()
        points = read_landmarks(clip.landmarks_path)
        assert points.shape == (len(table), 68, 2)
        assert points[..., 0].min() >= 0 and points[..., 0].max() <= cfg.width
        assert points[..., 1].min() >= 0 and points[..., 1].max() <= cfg.height


def test_landmarks_follow_the_ibug_68_layout(corpus):
    _, clips = corpus
    for clip in clips:
        p = np.median(read_landmarks(clip.landmarks_path), axis=0)
        x, y = p[:, 0], p[:, 1]
        assert x[0] < x[8] < x[16]  # jaw runs from the image left over the chin to the right
        assert y[8] > max(y[0], y[3], y[13], y[16])  # the chin is below the jaw's sides
        assert x[36:42].mean() < x[27] < x[42:48].mean()  # right eye on the image left
        assert y[17:27].mean() < y[36:48].mean() < y[30] < y[48:68].mean() < y[8]
        assert x[48] < x[51] < x[54] and y[51] < y[57]  # mouth corners, upper and lower lip
        assert y[62] <= y[66] + 1e-6  # inner lips never cross


def test_a_real_landmark_detector_finds_the_drawn_face(corpus):
    """The drawing is made from the landmarks: dlib's 68-point model recovers them."""
    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        pytest.skip("face_recognition_models (the dlib 68-point model) is not installed")
    model = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))
    _, clips = corpus
    errors = []
    for clip in clips:
        with av.open(clip.video_path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        t = len(frames) // 2
        faces = detector(frames[t], 1)
        if not faces:
            continue
        shape = predictor(frames[t], faces[0])
        found = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)])
        truth = read_landmarks(clip.landmarks_path)[t]
        inter_ocular = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
        errors.append(np.linalg.norm(found - truth, axis=1).mean() / inter_ocular)
    assert len(errors) >= 0.8 * len(clips)
    assert np.median(errors) < 0.2


# ------------------------------------------------------------------ determinism and reruns


def test_same_seed_same_corpus_other_seed_another(corpus, tmp_path):
    root, clips = corpus
    again = generate_corpus(tmp_path / "again", 2, seed=0, progress=False)
    other = generate_corpus(tmp_path / "other", 2, seed=1, progress=False)
    for first, second, third in zip(clips[:2], again, other):
        facts = [(c.clip_id, c.label, c.speaker, c.extra) for c in (first, second)]
        assert facts[0] == facts[1]
        landmarks = [Path(c.landmarks_path).read_bytes() for c in (first, second, third)]
        audio = [decode_audio(c.audio_path)[0] for c in (first, second, third)]
        assert landmarks[0] == landmarks[1] and landmarks[0] != landmarks[2]
        np.testing.assert_allclose(audio[0], audio[1], atol=1e-5)
        assert audio[0].size != audio[2].size or not np.allclose(audio[0], audio[2], atol=1e-3)
    assert _meta(root)["clips"][:2] == _meta(tmp_path / "again")["clips"]


def test_rerun_keeps_finished_clips_and_refuses_another_seed(tmp_path, capsys):
    first = generate_corpus(tmp_path, 2, seed=0, progress=False)
    stamps = {c.clip_id: Path(c.video_path).stat().st_mtime_ns for c in first}
    more = generate_corpus(tmp_path, 3, seed=0, progress=True)
    assert "synthetic corpus" in capsys.readouterr().err  # the tqdm bar
    assert [c.clip_id for c in more[:2]] == list(stamps)
    assert all(Path(c.video_path).stat().st_mtime_ns == stamps[c.clip_id] for c in more[:2])
    assert len(_meta(tmp_path)["clips"]) == 3
    with pytest.raises(AvserError, match="another seed or config"):
        generate_corpus(tmp_path, 3, seed=1, progress=False)


# ------------------------------------------------------------------ config


def test_config_round_trips_through_plain_dicts():
    cfg = SynthConfig(n_speakers=4, duration_s=(2.0, 3.0))
    assert to_dict(from_dict(SynthConfig, to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (SynthConfig(width=321), "even"),
        (SynthConfig(emotions=("neutral", "bored")), "bored"),
        (SynthConfig(emotions=("neutral",)), "at least two"),
        (SynthConfig(label_overlap=0.5), "label_overlap"),
    ],
)
def test_bad_config_is_refused(tmp_path, cfg, message):
    with pytest.raises(ConfigError, match=message):
        generate_corpus(tmp_path, 1, cfg=cfg, progress=False)


# ------------------------------------------------------------------ scanning


def test_scan_gives_the_generated_rows(corpus):
    root, clips = corpus
    result = scan_synthetic(root)
    assert result.problems == []
    assert result.labels == list(EMOTIONS)
    expected = clips_to_frame(clips).sort_values("clip_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(result.to_frame().reset_index(drop=True), expected)


def test_scan_reports_unknown_files(corpus, tmp_path):
    root, clips = corpus
    for suffix in (".mp4", ".csv"):
        shutil.copy(root / f"{clips[0].clip_id}{suffix}", tmp_path)
    shutil.copy(root / f"{clips[1].clip_id}.csv", tmp_path)  # landmarks without a video
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "spk01_bored_00099.mp4").write_bytes(b"")
    result = scan_synthetic(tmp_path)
    assert [c.clip_id for c in result.clips] == [clips[0].clip_id]
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    orphan = f"{clips[1].clip_id}.csv"
    assert set(reasons) == {"notes.txt", "spk01_bored_00099.mp4", orphan, CORPUS_FILE}
    assert "without a video" in reasons[orphan]
    assert "unknown emotion" in reasons["spk01_bored_00099.mp4"]


def test_scan_of_a_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(AvserError, match="generate_corpus"):
        scan_synthetic(tmp_path / "nowhere")


# ------------------------------------------------------------------ learnability

N_LEARN = 72  # 12 clips per emotion from 8 speakers
CHANCE = 1 / len(EMOTIONS)
FUSION_GAIN = 0.03  # both modalities together beat the better one by at least this


def audio_features(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Energy, pitch, voicing, brightness and tempo statistics of one utterance."""
    frame, hop, n_fft = sample_rate // 25, sample_rate // 100, 2048  # 40 ms frames, 10 ms hop
    n = 1 + (x.size - frame) // hop
    frames = x[np.arange(frame)[None, :] + hop * np.arange(n)[:, None]] * np.hanning(frame)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    voiced = energy > energy.max() - 25
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2
    autocorr = np.fft.irfft(power, axis=1)
    autocorr /= autocorr[:, :1] + 1e-12
    low, high = sample_rate // 400, sample_rate // 70  # pitch lags for 70-400 Hz
    lag = low + np.argmax(autocorr[:, low:high], axis=1)
    harmonicity = autocorr[np.arange(n), lag]
    pitched = voiced & (harmonicity > 0.5)
    semitones = 12 * np.log2(sample_rate / lag[pitched] / 100.0)
    slope = np.polyfit(np.flatnonzero(pitched) / n, semitones, 1)[0]
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    bass = power[voiced][:, freqs < 1000].sum()
    treble = power[voiced][:, (freqs > 1000) & (freqs < 4000)].sum()
    smooth = np.convolve(energy, np.ones(5) / 5, mode="same")
    is_peak = (smooth[1:-1] > smooth[:-2]) & (smooth[1:-1] >= smooth[2:]) & voiced[1:-1]
    return np.array([
        energy[voiced].mean(), energy[voiced].std(), np.percentile(energy, 95),
        np.median(semitones), semitones.std(), np.ptp(np.percentile(semitones, [10, 90])), slope,
        np.abs(np.diff(semitones)).mean(), harmonicity[voiced].mean(), voiced.mean(),
        is_peak.sum() / (x.size / sample_rate), 10 * np.log10(treble / bass),
    ])


def video_features(points: np.ndarray) -> np.ndarray:
    """Brow, eye, mouth and jaw geometry after removing head position, roll and scale."""
    right_eye, left_eye = points[:, 36:42].mean(1), points[:, 42:48].mean(1)
    across = left_eye - right_eye
    angle = -np.arctan2(across[:, 1], across[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    centred = points - (right_eye + left_eye)[:, None] / 2
    q = np.einsum("tij,tnj->tni", rotation, centred) / np.linalg.norm(across, axis=1)[:, None, None]
    x, y = q[..., 0], q[..., 1]
    per_frame = np.stack([
        y[:, 17:27].mean(1),  # brow height
        y[:, [21, 22]].mean(1) - y[:, [17, 26]].mean(1),  # inner vs outer brow
        x[:, 22] - x[:, 21],  # brow gap
        (y[:, [40, 41, 46, 47]] - y[:, [37, 38, 43, 44]]).mean(1),  # eye opening
        x[:, 54] - x[:, 48],  # mouth width
        y[:, 66] - y[:, 62],  # lip gap
        y[:, [48, 54]].mean(1) - y[:, [51, 57]].mean(1),  # mouth corners vs lip centre
        y[:, 8],  # chin
    ], axis=1)
    late = per_frame[len(per_frame) // 2 :]
    return np.concatenate([late.mean(0), per_frame.max(0), per_frame.min(0), per_frame.std(0)])


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=5000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, labels, cv=folds).mean())


def test_emotion_is_learnable_from_each_modality_and_better_from_both(corpus, tmp_path):
    cfg, (small, _) = SynthConfig(), corpus
    shutil.copytree(small, tmp_path / "learn")  # a rerun keeps these and adds the rest
    clips = generate_corpus(tmp_path / "learn", N_LEARN, seed=0, progress=False)
    samples = [decode_audio(c.audio_path)[0] for c in clips]
    audio = np.array([audio_features(x, cfg.sample_rate) for x in samples])
    video = np.array([video_features(read_landmarks(c.landmarks_path)) for c in clips])
    labels = np.array([c.label for c in clips])
    accuracy = {
        "audio": cross_validated_accuracy(audio, labels),
        "video": cross_validated_accuracy(video, labels),
        "both": cross_validated_accuracy(np.hstack([audio, video]), labels),
    }
    print("synthetic corpus learnability (5-fold logistic regression):", accuracy)
    for modality in ("audio", "video"):
        assert 2 * CHANCE < accuracy[modality] < 0.98, (modality, accuracy)
    assert accuracy["both"] >= max(accuracy["audio"], accuracy["video"]) + FUSION_GAIN, accuracy
