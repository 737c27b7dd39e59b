"""Landmark backends: OpenFace CSV (parse, align), the OpenFace binary, dlib on real video."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from avser.errors import (
    BackendUnavailableError,
    MissingFileError,
    NoFaceError,
    UnreadableMediaError,
)
from avser.features.config import LandmarkConfig, VideoConfig
from avser.features.landmarks import (
    N_LANDMARKS,
    DlibBackend,
    LandmarkTrack,
    OpenFaceBinaryBackend,
    OpenFaceCSVBackend,
    make_landmark_backend,
    read_openface_csv,
    require_face,
)
from avser.features.video import VideoFrames, decode_video

# Every 2nd frame, at most this many: enough to see a face come and go, fast on 2 cores.
STRIDE = 2
MAX_FRAMES = 90


def fake_frames(
    timestamps, *, fps, scale=1.0, source_size=(640, 360), frame_indices=None
) -> VideoFrames:
    """Frames whose pixels do not matter (CSV backends only read their times and size)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    width, height = (round(s * scale) for s in source_size)
    return VideoFrames(
        frames=np.zeros((len(timestamps), height, width, 3), dtype=np.uint8),
        timestamps=timestamps,
        fps=fps,
        source_size=source_size,
        scale=scale,
        frame_indices=None if frame_indices is None else np.asarray(frame_indices),
    )


def write_openface_csv(path: Path, rows: list[dict], *, face_id: bool) -> None:
    """A CSV laid out as OpenFace 2.0 writes it (", " separators)."""
    header = ["frame"] + (["face_id"] if face_id else []) + ["timestamp", "confidence", "success"]
    header += [f"x_{i}" for i in range(N_LANDMARKS)] + [f"y_{i}" for i in range(N_LANDMARKS)]
    lines = [", ".join(header)]
    for row in rows:
        values = [row["frame"]] + ([row.get("face_id", 0)] if face_id else [])
        values += [row["timestamp"], row["confidence"], row["success"]]
        values += list(row["x"]) + list(row["y"])
        lines.append(", ".join(str(v) for v in values))
    path.write_text("\n".join(lines) + "\n")


def csv_row(
    frame: int, fps: float, *, offset: float = 0.0, confidence=0.9, success=1, face_id=0
) -> dict:
    """Row ``frame`` (1-based); its x encode the frame: x_i = 100 * frame + i + offset."""
    return {
        "frame": frame, "face_id": face_id, "timestamp": round((frame - 1) / fps, 6),
        "confidence": confidence, "success": success,
        "x": [100.0 * frame + i + offset for i in range(N_LANDMARKS)],
        "y": [50.0 + i for i in range(N_LANDMARKS)],
    }


# ------------------------------------------------------------------ track object


def test_track_helpers_count_found_frames_and_drop_low_confidence():
    track = LandmarkTrack.empty(4)
    track.points[:] = 1.0
    track.success[:] = [True, True, False, True]
    track.confidence[:] = [0.9, 0.3, 0.9, 0.6]
    assert track.n_found == 3 and track.found_fraction == pytest.approx(0.75)
    kept = track.drop_below(0.5)
    assert kept.success.tolist() == [True, False, False, True]
    assert np.isnan(kept.points[1]).all() and not np.isnan(kept.points[0]).any()


def test_require_face_names_the_file_and_frame_count():
    with pytest.raises(NoFaceError, match=r"^clip\.mp4: no face found in any of 5 frames") as info:
        require_face(LandmarkTrack.empty(5), "clip.mp4")
    assert info.value.reason == "no_face" and info.value.path == "clip.mp4"


# ----------------------------------------------------------------- OpenFace CSV


def test_real_openface_csv_parses(shared_data):
    path = shared_data / "openface-csv" / "OpenFace_Test.csv"
    track, timestamps = read_openface_csv(path)
    assert track.points.shape == (100, 68, 2) and track.points.dtype == np.float32
    assert timestamps.shape == (100,) and np.all(np.diff(timestamps) > 0)
    assert np.all((track.confidence > 0.85) & (track.confidence < 1.0))  # 0.883333 or 0.983333
    assert track.success.all()
    # First row, as written in the file: x_0 = 277.276; a face spans a plausible box.
    assert track.points[0, 0, 0] == pytest.approx(277.276, abs=1e-3)
    span = track.points[0].max(axis=0) - track.points[0].min(axis=0)
    assert np.all((span > 50) & (span < 400))


def test_real_csv_aligns_by_frame_number_when_its_timestamps_disagree(shared_data):
    # This file stamps rows 1 ms apart (an image sequence); frame numbers still pair them.
    path = shared_data / "openface-csv" / "OpenFace_Test.csv"
    video = fake_frames(np.arange(100) / 30.0, fps=30.0, frame_indices=np.arange(100))
    track = OpenFaceCSVBackend().track(video, csv_path=str(path))
    rows, _ = read_openface_csv(path)
    assert track.success.all()
    np.testing.assert_allclose(track.points, rows.points)


def test_written_csv_with_face_id_aligns_by_time_and_scales_points(tmp_path):
    fps = 25.0
    rows = [csv_row(f, fps) for f in range(1, 21)]
    rows[8]["success"] = 0  # OpenFace lost the face on frame 9 (index 8)
    rows.append(csv_row(3, fps, offset=0.5, confidence=0.2, face_id=1))  # a weaker second face
    path = tmp_path / "clip.csv"
    write_openface_csv(path, rows, face_id=True)
    # Every 2nd frame, decoded at half size; the last two frames lie beyond the CSV.
    indices = np.arange(0, 24, 2)
    video = fake_frames(indices / fps, fps=fps, scale=0.5, frame_indices=indices)
    track = OpenFaceCSVBackend().track(video, csv_path=str(path))

    assert len(track) == len(indices)
    assert track.success.tolist() == [True] * 4 + [False] + [True] * 5 + [False, False]
    # Frame index 2 is OpenFace frame 3, whose stronger face (x_0 = 300) is kept.
    assert track.points[1, 0, 0] == pytest.approx(0.5 * 300.0)
    assert track.points[1, 5, 1] == pytest.approx(0.5 * 55.0)
    assert np.isnan(track.points[-1]).all()


def test_written_csv_without_face_id_and_failed_rows(tmp_path):
    fps = 30.0
    rows = [csv_row(f, fps) for f in range(1, 7)]
    rows[2]["success"] = 0
    rows[4]["confidence"] = 0.1  # found, but below min_confidence
    path = tmp_path / "noid.csv"
    write_openface_csv(path, rows, face_id=False)
    video = fake_frames(np.arange(6) / fps, fps=fps)  # no frame indices: matched by time only
    track = OpenFaceCSVBackend(LandmarkConfig(min_confidence=0.5)).track(video, csv_path=str(path))
    assert track.success.tolist() == [True, True, False, True, False, True]
    assert np.isnan(track.points[2]).all()
    assert track.points[5, 67, 0] == pytest.approx(600.0 + 67)


def test_frames_between_csv_rows_do_not_borrow_a_distant_row(tmp_path):
    fps = 10.0
    rows = [csv_row(1, fps), csv_row(5, fps)]  # OpenFace skipped frames 2-4
    path = tmp_path / "gap.csv"
    write_openface_csv(path, rows, face_id=False)
    video = fake_frames(np.arange(5) / fps, fps=fps)
    track = OpenFaceCSVBackend().track(video, csv_path=str(path))
    assert track.success.tolist() == [True, False, False, False, True]


def test_csv_errors_name_the_file(tmp_path):
    video = fake_frames([0.0], fps=25.0)
    with pytest.raises(MissingFileError, match="landmarks_path"):
        OpenFaceCSVBackend().track(video, video_path="v.mp4")
    with pytest.raises(MissingFileError, match="absent.csv"):
        OpenFaceCSVBackend().track(video, csv_path=str(tmp_path / "absent.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("frame, timestamp, confidence, success, x_0\n1, 0, 0.9, 1, 3\n")
    with pytest.raises(UnreadableMediaError, match=r"bad\.csv.*missing column"):
        OpenFaceCSVBackend().track(video, csv_path=str(bad))


# -------------------------------------------------------------- OpenFace binary


def test_openface_binary_absent_says_how_to_install_or_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: FeatureExtraction is not there
    with pytest.raises(BackendUnavailableError) as info:
        make_landmark_backend(LandmarkConfig(backend="openface"))
    message = str(info.value)
    assert "FeatureExtraction" in message and "OpenFace 2.0" in message
    assert "--landmarks dlib" in message and "openface-csv" in message


def test_openface_binary_runs_and_its_csv_is_read(monkeypatch, tmp_path, shared_data):
    """A stand-in FeatureExtraction that writes a real OpenFace CSV where OpenFace would."""
    source = shared_data / "openface-csv" / "OpenFace_Test.csv"
    binary = tmp_path / "bin" / "FeatureExtraction"
    binary.parent.mkdir()
    binary.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do case "$1" in\n'
        '  -f) f="$2"; shift;; -out_dir) o="$2"; shift;;\n'
        "esac; shift; done\n"
        f'name=$(basename "$f"); cp "{source}" "$o/${{name%.*}}.csv"\n'
    )
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    video_file = tmp_path / "clip.mp4"
    video_file.write_bytes(b"not decoded by the stand-in")
    backend = make_landmark_backend(LandmarkConfig(backend="openface"))
    assert isinstance(backend, OpenFaceBinaryBackend)
    video = fake_frames(np.arange(100) / 30.0, fps=30.0, frame_indices=np.arange(100))
    track = backend.track(video, video_path=str(video_file))
    assert track.n_found == 100


def test_unknown_backend_lists_the_three():
    with pytest.raises(BackendUnavailableError, match="dlib, openface-csv, openface"):
        make_landmark_backend(LandmarkConfig(backend="mediapipe"))


# -------------------------------------------------------------------------- dlib


@pytest.fixture(scope="module")
def dlib_backend() -> DlibBackend:
    return DlibBackend(LandmarkConfig())  # loads the 68-point model once for the module


def decode(shared_data: Path, name: str) -> VideoFrames:
    cfg = VideoConfig(frame_stride=STRIDE, max_frames=MAX_FRAMES)
    return decode_video(shared_data / "face-videos" / name, cfg)


def test_dlib_finds_the_face_in_nearly_every_frame(shared_data, dlib_backend):
    video = decode(shared_data, "single_face.mp4")
    track = dlib_backend.track(video)
    assert track.found_fraction >= 0.95
    assert track.points.shape == (len(video), 68, 2)
    found = track.points[track.success]
    height, width = video.frames.shape[1:3]
    assert np.all((found >= 0) & (found < np.array([width, height])))
    confidence = track.confidence[track.success]
    assert np.all((confidence >= 0.5) & (confidence <= 1.0))


def test_dlib_detects_rarely_and_agrees_with_per_frame_detection(shared_data, dlib_backend):
    video = decode(shared_data, "single_face.mp4")
    calls = []
    detect = dlib_backend._detect

    def counted(*args, **kwargs):
        calls.append(1)
        return detect(*args, **kwargs)

    dlib_backend._detect = counted
    try:
        ours = dlib_backend.track(video)
    finally:
        del dlib_backend._detect
    naive = DlibBackend(replace(dlib_backend.cfg, track=False, detect_width=None)).track(video)
    assert len(calls) <= len(video) // dlib_backend.cfg.redetect_every + 1
    both = ours.success & naive.success
    right, left = naive.points[both, 36:42].mean(axis=1), naive.points[both, 42:48].mean(axis=1)
    error = np.linalg.norm(ours.points[both] - naive.points[both], axis=2).mean(axis=1)
    assert np.mean(error / np.linalg.norm(left - right, axis=1)) < 0.03


def test_dlib_no_face_video_raises_no_face_error(shared_data, dlib_backend):
    path = shared_data / "face-videos" / "no_face.mp4"
    track = dlib_backend.track(decode(shared_data, "no_face.mp4"))
    assert track.n_found == 0 and np.isnan(track.points).all()
    with pytest.raises(NoFaceError, match="no_face.mp4"):
        require_face(track, path)


@pytest.mark.parametrize(
    ("name", "face_first"), [("face_noface.mov", True), ("noface_face.mov", False)]
)
def test_dlib_sees_the_face_leave_or_enter(shared_data, dlib_backend, name, face_first):
    video = decode_video(shared_data / "face-videos" / name, VideoConfig(frame_stride=STRIDE))
    track = dlib_backend.track(video)
    half = len(track) // 2
    first, second = track.success[:half].mean(), track.success[half:].mean()
    with_face, without = (first, second) if face_first else (second, first)
    assert with_face >= 0.7 and without <= 0.2
    # The face is seen in one stretch: it leaves (or enters) once, not flickering.
    assert np.count_nonzero(np.diff(track.success.astype(int))) <= 2
