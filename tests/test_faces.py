"""Aligned face crops, landmark regions, normalised landmarks, JPEG round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avser.errors import UnreadableMediaError
from avser.features.config import FaceConfig
from avser.features.faces import (
    REGIONS,
    align_face,
    aligned_landmarks,
    decode_jpeg,
    encode_jpeg,
    eye_centres,
    normalise_landmarks,
    region_points,
)
from avser.features.landmarks import read_openface_csv

FRAME_SHAPE = (360, 640, 3)
TILT_DEGREES = 25.0
SUBPIXEL = 16  # cv2 drawing with shift=4


def rotate(points: np.ndarray, degrees: float, about: np.ndarray) -> np.ndarray:
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return (points - about) @ rotation.T + about


@pytest.fixture(scope="module")
def face_points(shared_data) -> np.ndarray:
    """A real 68-point face (OpenFace, first frame), upright."""
    track, _ = read_openface_csv(shared_data / "openface-csv" / "OpenFace_Test.csv")
    return track.points[0].astype(np.float64)


@pytest.fixture
def tilted(face_points) -> np.ndarray:
    return rotate(face_points, TILT_DEGREES, face_points.mean(axis=0))


def test_regions_partition_the_68_points_in_the_design_order():
    assert list(REGIONS) == [
        "jaw", "right_brow", "left_brow", "nose", "right_eye", "left_eye", "mouth"
    ]
    covered = np.concatenate([np.arange(68)[part] for part in REGIONS.values()])
    np.testing.assert_array_equal(covered, np.arange(68))
    with pytest.raises(TypeError):
        REGIONS["extra"] = slice(0, 1)  # a shared constant, not editable


def test_region_points_shapes():
    parts = region_points(np.zeros((9, 68, 2)))
    assert [p.shape[1] for p in parts.values()] == [17, 5, 5, 9, 6, 6, 20]
    assert all(p.shape[0] == 9 and p.shape[2] == 2 for p in parts.values())
    with pytest.raises(ValueError, match="68"):
        region_points(np.zeros((9, 5, 2)))


def test_alignment_levels_tilted_eyes(tilted):
    right, left = eye_centres(tilted)
    assert abs(left[1] - right[1]) > 15  # really tilted before
    crop, moved = aligned_landmarks(np.zeros(FRAME_SHAPE, np.uint8), tilted, FaceConfig())
    right, left = eye_centres(moved)
    assert left[1] == pytest.approx(right[1], abs=1e-3)
    assert left[0] > right[0]  # not mirrored: the subject's left eye stays on the image right
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.all((moved >= 0) & (moved <= 224))  # the whole face is in the crop


def test_crop_pixels_follow_the_landmarks(tilted):
    """Eyes painted into the frame land where the transformed eye landmarks say, level."""
    frame = np.zeros(FRAME_SHAPE, np.uint8)
    for eye in eye_centres(tilted):  # drawn at sub-pixel precision (4 fractional bits)
        centre = tuple(int(round(v * SUBPIXEL)) for v in eye)
        cv2.circle(frame, centre, 6 * SUBPIXEL, (255, 255, 255), -1, lineType=cv2.LINE_AA, shift=4)
    crop, moved = aligned_landmarks(frame, tilted, FaceConfig(size=160))
    assert crop.shape == (160, 160, 3)
    weight = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    for eye in eye_centres(moved):
        near = weight * (np.hypot(xs - eye[0], ys - eye[1]) < 12)
        blob = np.array([(near * xs).sum(), (near * ys).sum()]) / near.sum()
        np.testing.assert_allclose(blob, eye, atol=0.3)


def test_margin_widens_the_crop(face_points):
    frame = np.zeros(FRAME_SHAPE, np.uint8)
    tight = aligned_landmarks(frame, face_points, FaceConfig(margin=0.0))[1]
    loose = aligned_landmarks(frame, face_points, FaceConfig(margin=1.0))[1]
    span = lambda p: np.ptp(p, axis=0).max()  # noqa: E731
    assert span(tight) == pytest.approx(224, abs=1e-3)
    assert span(loose) < span(tight)
    assert align_face(np.zeros(FRAME_SHAPE, np.uint8), face_points).shape == (224, 224, 3)


def test_normalise_landmarks_removes_position_scale_and_roll(face_points):
    base = normalise_landmarks(face_points)
    moved = rotate(face_points * 1.7 + np.array([55.0, -20.0]), -15.0, np.array([300.0, 200.0]))
    np.testing.assert_allclose(normalise_landmarks(moved), base, atol=1e-4)
    right, left = eye_centres(base)
    assert right[1] == pytest.approx(left[1], abs=1e-5)
    assert np.linalg.norm(left - right) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(base.mean(axis=0)).max() < 1e-5
    assert base.dtype == np.float32 and base.shape == (68, 2)


def test_normalise_landmarks_keeps_batch_shapes_and_nan(face_points):
    batch = np.stack([face_points, face_points + 10, np.full((68, 2), np.nan)])
    out = normalise_landmarks(batch[None])  # (1, 3, 68, 2)
    assert out.shape == (1, 3, 68, 2)
    np.testing.assert_allclose(out[0, 0], out[0, 1], atol=1e-5)
    assert np.isnan(out[0, 2]).all()


def test_jpeg_round_trip_keeps_size_and_colour_order():
    rows, cols = np.mgrid[0:224, 0:224]
    image = np.stack([rows, cols, np.full_like(rows, 40)], axis=-1).astype(np.uint8)  # smooth ramps
    data = encode_jpeg(image, quality=90)
    assert data[:2] == b"\xff\xd8"  # JPEG start-of-image marker
    back = decode_jpeg(data)
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image).mean() < 3.0
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    assert decode_jpeg(encode_jpeg(red, 90))[..., 0].min() > 240  # RGB in, RGB out
    assert len(encode_jpeg(image, 30)) < len(data)


def test_decode_jpeg_rejects_garbage():
    with pytest.raises(UnreadableMediaError, match="not a JPEG"):
        decode_jpeg(b"definitely not an image")
