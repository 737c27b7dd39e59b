"""What every landmark backend shares: the track it returns, the frames it
reads, the backend protocol. A base module: the backends
(:mod:`avser.features.openface`, :mod:`avser.features.dlib_tracking`) and the
factory (:mod:`avser.features.landmarks`) all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from avser.errors import NoFaceError
from avser.landmark_regions import N_LANDMARKS


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
