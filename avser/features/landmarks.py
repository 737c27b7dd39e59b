"""68-point facial landmarks per frame, from one of three backends.

- ``openface-csv``: landmarks OpenFace 2.0 already wrote (the paper's tool);
- ``openface``: runs OpenFace's ``FeatureExtraction`` binary, then reads its CSV;
- ``dlib``: offline, dlib's HOG face detector and 68-point shape predictor,
  detecting now and then and following the face from its landmarks between.

Every backend returns a :class:`LandmarkTrack` aligned with the frames it was
given, in those frames' pixel coordinates.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np
import pandas as pd

from avser.errors import (
    BackendUnavailableError,
    MissingFileError,
    NoFaceError,
    UnreadableMediaError,
)
from avser.features.config import LandmarkConfig

N_LANDMARKS = 68
BACKENDS = ("dlib", "openface-csv", "openface")

# Eyes and nose hardly move with expression or speech (jaw, mouth and brows
# do), so they anchor the box a followed face is searched in.
_RIGID_POINTS = np.arange(27, 48)
# A box narrower than this many pixels cannot hold a face the detector sees.
_MIN_BOX_PX = 8
# Verification crop: the followed box plus this fraction of its width on each side.
_VERIFY_MARGIN = 0.2
# A followed box with less than this fraction of its area inside the frame is lost.
_MIN_BOX_INSIDE = 0.5
# The check's detection must overlap the followed box this much (intersection
# over union), else the landmarks have drifted off the face.
_MIN_CHECK_IOU = 0.5
# Largest change of a followed face's size (eyes and nose) from one frame to the
# next; on real clips 99% of steps are under 5%, a slipped fit jumps 20% or more.
_MAX_SIZE_STEP = 1.15

_DLIB_MODEL_FILE = Path("models") / "shape_predictor_68_face_landmarks.dat"
_INSTALL_DLIB = "pip install dlib-bin face_recognition_models"
_INSTALL_OPENFACE = (
    "install OpenFace 2.0 (https://github.com/TadasBaltrusaitis/OpenFace/wiki) so that "
    "FeatureExtraction is on PATH, or use --landmarks dlib (offline) or "
    "--landmarks openface-csv with precomputed CSVs"
)
# Exit text kept from a failed FeatureExtraction run.
_STDERR_TAIL = 500


# --------------------------------------------------------------------------- track


@dataclass
class LandmarkTrack:
    """Landmarks of N frames.

    ``points`` ``(N, 68, 2)`` float32 pixel coordinates (x, y) in the frames
    given, NaN where no face was found; ``confidence`` ``(N,)`` float32 in
    [0, 1]; ``success`` ``(N,)`` bool, a face was found with enough confidence.
    """

    points: np.ndarray
    confidence: np.ndarray
    success: np.ndarray

    @classmethod
    def empty(cls, n_frames: int) -> LandmarkTrack:
        """A track of ``n_frames`` frames where no face is found (yet)."""
        return cls(
            points=np.full((n_frames, N_LANDMARKS, 2), np.nan, dtype=np.float32),
            confidence=np.zeros(n_frames, dtype=np.float32),
            success=np.zeros(n_frames, dtype=bool),
        )

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def n_found(self) -> int:
        return int(np.count_nonzero(self.success))

    @property
    def found_fraction(self) -> float:
        return self.n_found / len(self) if len(self) else 0.0

    def drop_below(self, min_confidence: float) -> LandmarkTrack:
        """Frames under ``min_confidence`` become not-found (points NaN)."""
        success = self.success & (self.confidence >= min_confidence)
        points = self.points.copy()
        points[~success] = np.nan
        return LandmarkTrack(points, self.confidence.copy(), success)


class FramesLike(Protocol):
    """What a backend needs of decoded frames (``avser.features.video.VideoFrames``)."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    timestamps: np.ndarray  # (N,) seconds


class LandmarkBackend(Protocol):
    name: str

    def track(
        self, video: FramesLike, *, video_path: str | None = None, csv_path: str | None = None
    ) -> LandmarkTrack:
        """Landmarks of every frame of ``video``, aligned with its frames."""
        ...


def require_face(track: LandmarkTrack, path: str | Path | None) -> None:
    """Raise :class:`NoFaceError` when no frame of ``track`` has a face."""
    if track.n_found == 0:
        raise NoFaceError(
            path,
            f"no face found in any of {len(track)} frames",  # the error prefixes the path
            "check that the clip shows a frontal face; small faces need a larger "
            "landmarks.detect_width or landmarks.upsample=1",
        )


# ----------------------------------------------------------------- OpenFace CSV


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


# -------------------------------------------------------------- OpenFace binary


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


# -------------------------------------------------------------------------- dlib


def _sigmoid(score: float) -> float:
    return float(1.0 / (1.0 + np.exp(-score)))


def _logit(probability: float) -> float:
    probability = float(np.clip(probability, 1e-6, 1 - 1e-6))
    return float(np.log(probability / (1.0 - probability)))


def dlib_model_path() -> Path:
    """The 68-point model file shipped in ``face_recognition_models`` (not imported:
    its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            f"the dlib backend needs the face_recognition_models package: {_INSTALL_DLIB}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DLIB_MODEL_FILE
    if not path.is_file():
        raise BackendUnavailableError(f"{path} is missing; reinstall it: {_INSTALL_DLIB}")
    return path


@dataclass
class _Box:
    """An axis-aligned face box in frame pixels (float), convertible to dlib's."""

    left: float
    top: float
    width: float
    height: float

    @classmethod
    def from_dlib(cls, rect, factor: float = 1.0) -> _Box:
        """``rect`` found on an image ``factor`` times the frame size."""
        return cls(
            rect.left() / factor, rect.top() / factor, rect.width() / factor, rect.height() / factor
        )

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.left + self.width / 2, self.top + self.height / 2])

    def to_dlib(self, dlib):
        return dlib.rectangle(
            int(round(self.left)), int(round(self.top)),
            int(round(self.left + self.width)), int(round(self.top + self.height)),
        )

    def shifted(self, dx: float, dy: float) -> _Box:
        return _Box(self.left + dx, self.top + dy, self.width, self.height)

    def iou(self, other: _Box) -> float:
        """Intersection over union of two boxes."""
        right = min(self.left + self.width, other.left + other.width)
        bottom = min(self.top + self.height, other.top + other.height)
        inter_w = max(0.0, right - max(self.left, other.left))
        inter_h = max(0.0, bottom - max(self.top, other.top))
        inter = inter_w * inter_h
        return inter / max(self.width * self.height + other.width * other.height - inter, 1e-9)

    def fraction_inside(self, frame_width: int, frame_height: int) -> float:
        inside_w = max(0.0, min(self.left + self.width, frame_width) - max(self.left, 0.0))
        inside_h = max(0.0, min(self.top + self.height, frame_height) - max(self.top, 0.0))
        return inside_w * inside_h / max(self.width * self.height, 1e-9)


def _rigid_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and RMS radius of the eyes and nose."""
    rigid = points[_RIGID_POINTS]
    centre = rigid.mean(axis=0)
    return centre, float(np.sqrt(((rigid - centre) ** 2).sum(axis=1).mean()))


@dataclass
class _BoxFromLandmarks:
    """Where the detector put its box relative to the eyes and nose, measured at
    the last detection; the shape predictor was trained on detector boxes, so a
    followed face gets a box placed the same way."""

    offset: np.ndarray  # box centre - rigid centre, in rigid radii
    width: float  # in rigid radii
    height: float

    @classmethod
    def calibrate(cls, box: _Box, points: np.ndarray) -> _BoxFromLandmarks:
        centre, radius = _rigid_frame(points)
        return cls((box.centre - centre) / radius, box.width / radius, box.height / radius)

    def box(self, points: np.ndarray) -> _Box:
        centre, radius = _rigid_frame(points)
        middle = centre + self.offset * radius
        width, height = self.width * radius, self.height * radius
        return _Box(middle[0] - width / 2, middle[1] - height / 2, width, height)


class _Sighting(NamedTuple):
    """Where a face is in one frame, before its landmarks are fitted."""

    box: _Box
    score: float  # detector score
    placement: _BoxFromLandmarks | None  # None: a fresh full-frame detection


@dataclass
class _Followed:
    """The face followed from the previous frame."""

    points: np.ndarray
    placement: _BoxFromLandmarks
    since_detection: int


def _size_jumped(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether the eyes-and-nose size changed by more than ``_MAX_SIZE_STEP`` either way."""
    ratio = _rigid_frame(after)[1] / _rigid_frame(before)[1]
    return not (1.0 / _MAX_SIZE_STEP <= ratio <= _MAX_SIZE_STEP)


def _downscale(image: np.ndarray, width: int | None) -> tuple[np.ndarray, float]:
    """``image`` shrunk to ``width`` (never enlarged) and the factor applied."""
    if width is None or image.shape[1] <= width:
        return image, 1.0
    factor = width / image.shape[1]
    height = max(1, int(round(image.shape[0] * factor)))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), factor


class DlibBackend:
    """dlib HOG face detector + 68-point shape predictor, loaded once per instance.

    With ``cfg.track`` (the default) the detector runs on a frame shrunk to
    ``cfg.detect_width`` every ``cfg.redetect_every`` frames, or when the face
    is lost; in between, the box comes from the previous frame's landmarks
    and is checked by running the detector on a small crop around it (far
    cheaper than a full-frame search). The shape predictor always runs on the
    full-resolution frame. Without ``cfg.track`` every frame is searched.

    Confidence is sigmoid(detector score), from the full-frame detection or
    the crop check; ``cfg.min_confidence`` 0.5 is the detector's own threshold.
    """

    name = "dlib"

    def __init__(self, cfg: LandmarkConfig | None = None) -> None:
        self.cfg = cfg or LandmarkConfig()
        try:
            import dlib
        except ImportError as exc:
            raise BackendUnavailableError(f"the dlib backend needs dlib: {_INSTALL_DLIB}") from exc
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path()))
        self._threshold = _logit(self.cfg.min_confidence)

    def track(
        self, video: FramesLike, *, video_path: str | None = None, csv_path: str | None = None
    ) -> LandmarkTrack:
        frames = video.frames
        result = LandmarkTrack.empty(len(frames))
        followed: _Followed | None = None
        for i, frame in enumerate(frames):
            fit = self._fit(np.ascontiguousarray(frame), followed)
            if fit is None:
                followed = None
                continue
            followed, score = fit
            result.points[i] = followed.points
            result.confidence[i] = _sigmoid(score)
            result.success[i] = True
        return result

    def _fit(self, frame: np.ndarray, followed: _Followed | None) -> tuple[_Followed, float] | None:
        """Landmarks of ``frame`` (as the new followed face) and the detector score."""
        sighting = self._locate(frame, followed)
        if sighting is not None and sighting.placement is not None:
            points = self._shape(frame, sighting.box)
            if not _size_jumped(followed.points, points):
                steps = followed.since_detection + 1
                return _Followed(points, sighting.placement, steps), sighting.score
            # A face does not change size this fast between frames: the fit slid
            # off the face (fast motion, occlusion). Start again from a detection.
            sighting = self._detect(frame)
        if sighting is None:
            return None
        points = self._shape(frame, sighting.box)
        placement = _BoxFromLandmarks.calibrate(sighting.box, points)
        return _Followed(points, placement, 0), sighting.score

    def _locate(self, frame: np.ndarray, followed: _Followed | None) -> _Sighting | None:
        """Where the face of ``frame`` is, or None. A periodic re-detection that
        misses still lets a face that checks out be followed."""
        if not self.cfg.track:
            return self._detect(frame)
        due = followed is None or followed.since_detection + 1 >= self.cfg.redetect_every
        attempts = (self._detect, self._follow) if due else (self._follow, self._detect)
        for attempt in attempts:
            sighting = attempt(frame, followed)
            if sighting is not None:
                return sighting
        return None

    def _detect(self, frame: np.ndarray, followed: _Followed | None = None) -> _Sighting | None:
        """The largest face the detector finds in the (shrunk) frame (``followed`` unused)."""
        small, factor = _downscale(frame, self.cfg.detect_width)
        rects, scores, _ = self._detector.run(small, self.cfg.upsample, self._threshold)
        if len(rects) == 0:
            return None
        best = max(range(len(rects)), key=lambda j: rects[j].area())
        return _Sighting(_Box.from_dlib(rects[best], factor), float(scores[best]), None)

    def _follow(self, frame: np.ndarray, followed: _Followed | None) -> _Sighting | None:
        """The box the previous landmarks predict, if the detector confirms a face there."""
        if followed is None:
            return None
        box = followed.placement.box(followed.points)
        inside = box.fraction_inside(frame.shape[1], frame.shape[0])
        if box.width < _MIN_BOX_PX or inside < _MIN_BOX_INSIDE:
            return None
        checked = self._check(frame, box)
        if checked is None or checked[1].iou(box) < _MIN_CHECK_IOU:
            return None  # no face there, or the landmarks drifted off it
        return _Sighting(box, checked[0], followed.placement)

    def _check(self, frame: np.ndarray, box: _Box) -> tuple[float, _Box] | None:
        """The detector's best (score, box) on a crop around ``box``, scaled so
        the face is ``cfg.verify_face_px`` wide; None when it sees no face."""
        margin = _VERIFY_MARGIN * box.width
        x0, y0 = int(max(box.left - margin, 0)), int(max(box.top - margin, 0))
        x1 = int(min(box.left + box.width + margin, frame.shape[1]))
        y1 = int(min(box.top + box.height + margin, frame.shape[0]))
        factor = self.cfg.verify_face_px / box.width
        size = (max(1, int(round((x1 - x0) * factor))), max(1, int(round((y1 - y0) * factor))))
        # Bilinear: a third of INTER_AREA's cost, and HOG on a face this size does not mind.
        crop = cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR)
        rects, scores, _ = self._detector.run(crop, 0, self._threshold)
        if len(rects) == 0:
            return None
        best = int(np.argmax(scores))
        found = _Box.from_dlib(rects[best], size[0] / (x1 - x0))
        return float(scores[best]), found.shifted(x0, y0)

    def _shape(self, frame: np.ndarray, box: _Box) -> np.ndarray:
        shape = self._predictor(frame, box.to_dlib(self._dlib))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# ----------------------------------------------------------------------- factory


def make_landmark_backend(cfg: LandmarkConfig | None = None) -> LandmarkBackend:
    """The backend ``cfg.backend`` names (models loaded once, here)."""
    cfg = cfg or LandmarkConfig()
    makers = {
        "dlib": DlibBackend, "openface-csv": OpenFaceCSVBackend, "openface": OpenFaceBinaryBackend
    }
    if cfg.backend not in makers:
        raise BackendUnavailableError(
            f"unknown landmark backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    return makers[cfg.backend](cfg)
