"""Landmarks OpenFace 2.0 wrote: reading its CSV, aligning the rows with decoded
frames, and running its ``FeatureExtraction`` binary.

- ``openface-csv``: landmarks OpenFace 2.0 already wrote (the paper's tool);
- ``openface``: runs OpenFace's ``FeatureExtraction`` binary, then reads its CSV.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avser.errors import BackendUnavailableError, MissingFileError, UnreadableMediaError
from avser.features.config import LandmarkConfig
from avser.features.landmark_track import N_LANDMARKS, FramesLike, LandmarkTrack

_INSTALL_OPENFACE = (
    "install OpenFace 2.0 (https://github.com/TadasBaltrusaitis/OpenFace/wiki) so that "
    "FeatureExtraction is on PATH, or use --landmarks dlib (offline) or "
    "--landmarks openface-csv with precomputed CSVs"
)
# Exit text kept from a failed FeatureExtraction run.
_STDERR_TAIL = 500


@dataclass
class _OpenFaceRows:
    """One row per frame of an OpenFace CSV (the most confident face per frame)."""

    track: LandmarkTrack
    timestamps: np.ndarray  # (R,) seconds
    frame_numbers: np.ndarray | None  # (R,) OpenFace's 1-based frame counter


def _landmark_columns() -> list[str]:
    return [f"x_{i}" for i in range(N_LANDMARKS)] + [f"y_{i}" for i in range(N_LANDMARKS)]


def _read_rows(path: str | Path) -> _OpenFaceRows:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            path, "OpenFace CSV does not exist", "check landmarks_path in the manifest"
        )
    try:
        # OpenFace separates with ", ": skipinitialspace strips the blank from values and names.
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UnreadableMediaError(
            path, f"not a readable CSV ({exc})", "re-run OpenFace FeatureExtraction"
        ) from exc
    table.columns = [str(c).strip() for c in table.columns]
    needed = _landmark_columns() + ["confidence", "success", "timestamp"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UnreadableMediaError(
            path,
            f"not an OpenFace 2.0 landmark CSV: missing column(s) {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            "run FeatureExtraction with -2Dfp so the 2D landmarks are written",
        )
    table = _most_confident_face_per_frame(table)
    xy = table[_landmark_columns()].to_numpy(dtype=np.float32)
    points = np.stack([xy[:, :N_LANDMARKS], xy[:, N_LANDMARKS:]], axis=-1)
    track = LandmarkTrack(
        points=points,
        confidence=table["confidence"].to_numpy(dtype=np.float32),
        success=table["success"].to_numpy() > 0,
    )
    frames = table["frame"].to_numpy(dtype=np.int64) if "frame" in table.columns else None
    return _OpenFaceRows(track, table["timestamp"].to_numpy(dtype=np.float64), frames)


def _most_confident_face_per_frame(table: pd.DataFrame) -> pd.DataFrame:
    """OpenFace's multi-face tools write one row per face; keep one per frame."""
    if "face_id" not in table.columns or "frame" not in table.columns:
        return table.reset_index(drop=True)
    best = table.sort_values("confidence", ascending=False, kind="stable").drop_duplicates("frame")
    return best.sort_values("frame", kind="stable").reset_index(drop=True)


def read_openface_csv(path: str | Path) -> tuple[LandmarkTrack, np.ndarray]:
    """An OpenFace 2.0 ``FeatureExtraction`` CSV as (track of its rows, row timestamps).

    Points are in the source video's pixels; rows OpenFace marked
    ``success == 0`` keep their values but ``success`` is False. Several
    faces per frame (a ``face_id`` column) keep the most confident one.
    """
    rows = _read_rows(path)
    return rows.track, rows.timestamps


def _video_fps(video: FramesLike) -> float:
    fps = float(getattr(video, "fps", 0.0) or 0.0)
    if fps > 0:
        return fps
    steps = np.diff(np.asarray(video.timestamps, dtype=np.float64))
    steps = steps[steps > 0]
    return 1.0 / float(np.median(steps)) if len(steps) else 1.0


def _frame_scale(video: FramesLike) -> float:
    """Frame pixels per source pixel (decode_video may have shrunk the frames)."""
    scale = getattr(video, "scale", None)
    if scale:
        return float(scale)
    source_size = getattr(video, "source_size", None)
    if source_size:
        return video.frames.shape[2] / float(source_size[0])
    return 1.0


def _match_by_time(row_times: np.ndarray, frame_times: np.ndarray, tolerance: float) -> np.ndarray:
    """Per frame, the row nearest in time within ``tolerance`` (-1: none)."""
    order = np.argsort(row_times, kind="stable")
    sorted_times = row_times[order]
    right = np.clip(np.searchsorted(sorted_times, frame_times), 0, len(sorted_times) - 1)
    left = np.clip(right - 1, 0, len(sorted_times) - 1)
    gap_left = np.abs(sorted_times[left] - frame_times)
    pick = np.where(gap_left <= np.abs(sorted_times[right] - frame_times), left, right)
    within = np.abs(sorted_times[pick] - frame_times) <= tolerance
    return np.where(within, order[pick], -1)


def _match_by_frame_number(row_frames: np.ndarray, frame_indices: np.ndarray) -> np.ndarray:
    """Per frame, the row with OpenFace frame number index + 1 (-1: none)."""
    lookup = {int(f): r for r, f in enumerate(row_frames)}
    return np.array([lookup.get(int(i) + 1, -1) for i in frame_indices], dtype=np.int64)


def _match_rows(rows: _OpenFaceRows, video: FramesLike) -> np.ndarray:
    """Which CSV row belongs to each frame: by timestamp, nearest within half a frame.

    OpenFace stamps rows with frame / nominal fps, which is wrong for image
    sequences (fake 1 ms steps) and drifts on variable-frame-rate files;
    where OpenFace's 1-based frame numbers pair more frames with the decoded
    frame indices, those win.
    """
    frame_times = np.asarray(video.timestamps, dtype=np.float64)
    if len(rows.timestamps) == 0:
        return np.full(len(frame_times), -1, dtype=np.int64)
    by_time = _match_by_time(rows.timestamps, frame_times, 0.5 / _video_fps(video))
    indices = getattr(video, "frame_indices", None)
    if rows.frame_numbers is None or indices is None:
        return by_time
    by_frame = _match_by_frame_number(rows.frame_numbers, np.asarray(indices))
    return by_frame if np.count_nonzero(by_frame >= 0) > np.count_nonzero(by_time >= 0) else by_time


def _align_rows(rows: _OpenFaceRows, video: FramesLike) -> LandmarkTrack:
    """CSV rows -> a track with one entry per frame of ``video``, in its pixels."""
    match = _match_rows(rows, video)
    aligned = LandmarkTrack.empty(len(match))
    found = match >= 0
    aligned.points[found] = rows.track.points[match[found]] * _frame_scale(video)
    aligned.confidence[found] = rows.track.confidence[match[found]]
    aligned.success[found] = rows.track.success[match[found]]
    return aligned


class OpenFaceCSVBackend:
    """Landmarks from an OpenFace 2.0 CSV given per clip (``csv_path``)."""

    name = "openface-csv"

    def __init__(self, cfg: LandmarkConfig | None = None) -> None:
        self.cfg = cfg or LandmarkConfig()

    def track(
        self, video: FramesLike, *, video_path: str | None = None, csv_path: str | None = None
    ) -> LandmarkTrack:
        if csv_path is None:
            raise MissingFileError(
                video_path,
                "no OpenFace CSV given for this clip",
                "set landmarks_path in the manifest or use --landmarks dlib",
            )
        return _align_rows(_read_rows(csv_path), video).drop_below(self.cfg.min_confidence)


class OpenFaceBinaryBackend:
    """Runs OpenFace 2.0's ``FeatureExtraction`` on the clip's video file."""

    name = "openface"

    def __init__(self, cfg: LandmarkConfig | None = None) -> None:
        self.cfg = cfg or LandmarkConfig()
        found = shutil.which(self.cfg.openface_binary)
        if found is None:
            raise BackendUnavailableError(
                f"OpenFace binary {self.cfg.openface_binary!r} is not on PATH: {_INSTALL_OPENFACE}"
            )
        self.binary = found

    def _run(self, video_path: Path, out_dir: Path) -> Path:
        # -2Dfp: write the 2D landmarks (x_0..y_67); visualisation is off unless asked for.
        command = [self.binary, "-f", str(video_path), "-out_dir", str(out_dir), "-2Dfp"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.cfg.openface_timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise UnreadableMediaError(
                video_path,
                f"OpenFace ran longer than {self.cfg.openface_timeout_s:.0f} s",
                "raise landmarks.openface_timeout_s or use --landmarks dlib",
            ) from exc
        csv_path = out_dir / f"{video_path.stem}.csv"
        if done.returncode != 0 or not csv_path.is_file():
            raise UnreadableMediaError(
                video_path,
                f"OpenFace FeatureExtraction failed (exit {done.returncode}): "
                f"{done.stderr[-_STDERR_TAIL:].strip()}",
                "check that OpenFace reads this file, or use --landmarks dlib",
            )
        return csv_path

    def track(
        self, video: FramesLike, *, video_path: str | None = None, csv_path: str | None = None
    ) -> LandmarkTrack:
        if video_path is None:
            raise ValueError("the openface backend runs on a video file: pass video_path")
        path = Path(video_path)
        if not path.is_file():
            raise MissingFileError(
                path, "video file does not exist", "check video_path in the manifest"
            )
        with tempfile.TemporaryDirectory(prefix="avser-openface-") as out_dir:
            rows = _read_rows(self._run(path, Path(out_dir)))
        return _align_rows(rows, video).drop_below(self.cfg.min_confidence)
