"""68-point facial landmarks per frame, from one of three backends.

- ``openface-csv``: landmarks OpenFace 2.0 already wrote (the paper's tool);
- ``openface``: runs OpenFace's ``FeatureExtraction`` binary, then reads its CSV;
- ``dlib``: offline, dlib's HOG face detector and 68-point shape predictor,
  detecting now and then and following the face from its landmarks between.

Every backend returns a :class:`LandmarkTrack` aligned with the frames it was
given, in those frames' pixel coordinates. This module holds the types every
backend shares and the factory; the backends live in
:mod:`avser.features.openface` and :mod:`avser.features.dlib_tracking`, imported
when first asked for (their names stay importable from here).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from avser.errors import BackendUnavailableError, NoFaceError
from avser.features.config import LandmarkConfig
from avser.landmark_regions import N_LANDMARKS  # re-exported

if TYPE_CHECKING:
    from avser.features.dlib_tracking import DlibBackend, dlib_model_path
    from avser.features.openface import (
        OpenFaceBinaryBackend,
        OpenFaceCSVBackend,
        read_openface_csv,
    )

BACKENDS = ("dlib", "openface-csv", "openface")

# Where each backend-module name importable from here is defined; the backend
# modules import this one for the shared types, so they are loaded on first use.
_BACKEND_NAMES = {
    "read_openface_csv": "avser.features.openface",
    "OpenFaceCSVBackend": "avser.features.openface",
    "OpenFaceBinaryBackend": "avser.features.openface",
    "DlibBackend": "avser.features.dlib_tracking",
    "dlib_model_path": "avser.features.dlib_tracking",
}

__all__ = [
    "BACKENDS",
    "N_LANDMARKS",
    "FramesLike",
    "LandmarkBackend",
    "LandmarkTrack",
    "make_landmark_backend",
    "require_face",
    *_BACKEND_NAMES,
]


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


def __getattr__(name: str):
    """The backend names (``DlibBackend``, ``read_openface_csv``, ...), from their modules."""
    module = _BACKEND_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def make_landmark_backend(cfg: LandmarkConfig | None = None) -> LandmarkBackend:
    """The backend ``cfg.backend`` names (models loaded once, here)."""
    cfg = cfg or LandmarkConfig()
    makers = {
        "dlib": "DlibBackend",
        "openface-csv": "OpenFaceCSVBackend",
        "openface": "OpenFaceBinaryBackend",
    }
    if cfg.backend not in makers:
        raise BackendUnavailableError(
            f"unknown landmark backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    backend_class = __getattr__(makers[cfg.backend])
    return backend_class(cfg)
