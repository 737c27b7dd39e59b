"""The offline ``dlib`` landmark backend: dlib's HOG face detector and 68-point
shape predictor, detecting now and then and following the face from its
landmarks between."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from avser.errors import BackendUnavailableError
from avser.features.config import LandmarkConfig
from avser.features.landmark_track import FramesLike, LandmarkTrack

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
