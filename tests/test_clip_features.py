"""One clip -> store arrays (avser.features.clip) and the `avser features` command."""

from __future__ import annotations

import numpy as np
import pytest

from avser import cli
from avser.data.synthetic import generate_corpus
from avser.features.clip import extract_clip, pad_keyframes
from avser.features.config import FeatureConfig
from avser.features.faces import decode_jpeg
from avser.features.landmarks import OpenFaceCSVBackend, read_openface_csv
from avser.features.video import decode_video


@pytest.fixture(scope="module")
def synthetic_clips(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("synth"), 2, seed=3, progress=False)


def csv_config(k: int = 5) -> FeatureConfig:
    cfg = FeatureConfig()
    cfg.landmarks.backend = "openface-csv"
    cfg.keyframes.k = k
    cfg.faces.size = 64
    return cfg


def test_openface_csv_backend_reproduces_the_ground_truth(synthetic_clips):
    clip = synthetic_clips[0]
    cfg = csv_config()
    video = decode_video(clip.video_path, cfg.video)
    track = OpenFaceCSVBackend(cfg.landmarks).track(video, video_path=clip.video_path,
                                                     csv_path=clip.landmarks_path)
    truth, _ = read_openface_csv(clip.landmarks_path)
    assert track.success.all()
    # Same frames, scaled to the decoded frame size (the synthetic video is not downscaled).
    np.testing.assert_allclose(track.points, truth.points[: len(video)] * video.scale, atol=1e-3)


def test_extract_clip_gives_store_shaped_arrays(synthetic_clips):
    clip = synthetic_clips[1]
    cfg = csv_config(k=5)
    backend = OpenFaceCSVBackend(cfg.landmarks)
    features = extract_clip(clip, cfg, backend)
    assert features.logmel.dtype == np.float16 and features.logmel.shape[:2] == (3, 128)
    assert np.isfinite(features.logmel.astype(np.float32)).all()
    assert features.landmarks.shape == (5, 68, 2) and np.isfinite(features.landmarks).all()
    assert list(features.keyframe_index) == sorted(features.keyframe_index)
    assert len(features.face_jpegs) == 5
    assert decode_jpeg(features.face_jpegs[0]).shape == (64, 64, 3)
    assert features.face_fraction == 1.0 and features.n_frames > 5


def test_audio_only_clip_has_no_visual_arrays(synthetic_clips):
    clip = synthetic_clips[0]
    audio_only = type(clip)(**{**clip.__dict__, "video_path": None})
    features = extract_clip(audio_only, csv_config(), landmarker=None)
    assert not features.has_visual and features.face_jpegs is None


def test_pad_keyframes_fills_k_in_time_order():
    assert pad_keyframes(np.array([7, 2]), 4).tolist() == [2, 2, 7, 7]
    assert pad_keyframes(np.array([5, 1, 3]), 3).tolist() == [1, 3, 5]


def test_features_command_reports_no_face_clearly(shared_data, capsys):
    code = cli.main(["features", str(shared_data / "face-videos" / "no_face.mp4"), "--landmarks", "dlib"])
    out = capsys.readouterr().out
    assert code == 1
    assert "no face found in any of" in out and "no_face.mp4" in out
    assert "logmel" in out  # the audio part still ran
