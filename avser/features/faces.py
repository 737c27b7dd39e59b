"""Landmark-aligned face crops, the 7 landmark regions, normalised landmarks, JPEG.

Crops feed the appearance CNN (EfficientNet-B0); normalised landmarks, split
into the 7 regions, feed the AGRUs (paper section II-D).
"""

from __future__ import annotations

import cv2
import numpy as np

from avser.errors import UnreadableMediaError
from avser.features.config import FaceConfig
from avser.landmark_regions import N_LANDMARKS, REGIONS

# The subject's right eye is on the image's left.
_RIGHT_EYE = REGIONS["right_eye"]
_LEFT_EYE = REGIONS["left_eye"]
# Below this many pixels the eyes coincide: no usable rotation or scale.
_MIN_IOD_PX = 1e-6


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right eye centre, left eye centre) of ``(..., 68, 2)`` landmarks."""
    points = np.asarray(points, dtype=np.float64)
    return points[..., _RIGHT_EYE, :].mean(axis=-2), points[..., _LEFT_EYE, :].mean(axis=-2)


def _levelling_rotation(points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(2x2 rotation that makes the eye line horizontal, inter-ocular distance, eye midpoint)."""
    right, left = eye_centres(points)
    dx, dy = left - right
    iod = float(np.hypot(dx, dy))
    if not np.isfinite(iod) or iod < _MIN_IOD_PX:
        raise ValueError("landmarks have coincident or missing eyes; cannot align the face")
    cos, sin = dx / iod, dy / iod
    return np.array([[cos, sin], [-sin, cos]]), iod, (left + right) / 2.0


def face_transform(points: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """2x3 similarity transform: frame pixels -> the aligned ``cfg.size`` crop.

    Rotates about the eye midpoint so the eyes are level, then fits a square
    around the levelled landmarks plus ``cfg.margin`` inter-ocular distances
    on each side, scaled to ``cfg.size`` pixels.
    """
    rotation, iod, pivot = _levelling_rotation(points)
    levelled = (np.asarray(points, dtype=np.float64) - pivot) @ rotation.T
    low, high = levelled.min(axis=0), levelled.max(axis=0)
    side = float((high - low).max()) + 2.0 * cfg.margin * iod
    scale = cfg.size / side
    middle = (low + high) / 2.0
    linear = scale * rotation
    shift = -linear @ pivot - scale * middle + cfg.size / 2.0
    return np.hstack([linear, shift[:, None]])


def aligned_landmarks(
    frame: np.ndarray, points: np.ndarray, cfg: FaceConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The aligned ``(size, size, 3)`` uint8 crop and the landmarks in its pixels."""
    cfg = cfg or FaceConfig()
    transform = face_transform(points, cfg)
    crop = cv2.warpAffine(
        np.ascontiguousarray(frame), transform, (cfg.size, cfg.size),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    moved = np.asarray(points, dtype=np.float64) @ transform[:, :2].T + transform[:, 2]
    return crop, moved.astype(np.float32)


def align_face(frame: np.ndarray, points: np.ndarray, cfg: FaceConfig | None = None) -> np.ndarray:
    """The face of ``frame`` (H, W, 3 uint8) as a ``(size, size, 3)`` uint8 crop,
    eyes level, framed by its 68 ``points`` (pixel x, y)."""
    return aligned_landmarks(frame, points, cfg)[0]


def normalise_landmarks(points: np.ndarray) -> np.ndarray:
    """Landmarks ``(..., 68, 2)`` with position, scale and roll removed (the AGRU input).

    Centred on the mean point, eyes rotated level, divided by the inter-ocular
    distance. Shapes with missing (NaN) or coincident eyes come back NaN.
    """
    points = np.asarray(points, dtype=np.float64)
    centred = points - points.mean(axis=-2, keepdims=True)
    right, left = eye_centres(points)
    delta = left - right
    iod = np.hypot(delta[..., 0], delta[..., 1])
    valid = np.isfinite(iod) & (iod >= _MIN_IOD_PX)
    safe = np.where(valid, iod, 1.0)
    cos, sin = delta[..., 0] / safe, delta[..., 1] / safe
    x, y = centred[..., 0], centred[..., 1]
    cos, sin = cos[..., None], sin[..., None]
    levelled = np.stack([cos * x + sin * y, -sin * x + cos * y], axis=-1)
    normalised = levelled / safe[..., None, None]
    return np.where(valid[..., None, None], normalised, np.nan).astype(np.float32)


def region_points(points: np.ndarray) -> dict[str, np.ndarray]:
    """``(..., 68, 2)`` landmarks split into the 7 :data:`REGIONS`, in order."""
    points = np.asarray(points)
    if points.shape[-2] != N_LANDMARKS:
        raise ValueError(f"expected {N_LANDMARKS} landmarks, got shape {points.shape}")
    return {name: points[..., part, :] for name, part in REGIONS.items()}


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 image -> JPEG bytes."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return buffer.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 image."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableMediaError(
            None, f"{len(data)} bytes are not a JPEG image", "re-run preprocessing"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
