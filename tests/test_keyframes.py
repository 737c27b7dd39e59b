"""Keyframe selection by RBF-kernel k-means."""

from __future__ import annotations

import numpy as np
import pytest

from avser.errors import TooFewFramesError
from avser.features.keyframes import landmark_descriptors, rbf_kernel, select_keyframes
from avser.features.landmarks import read_openface_csv

DIM = 136
SEGMENT_LENGTHS = (12, 30, 8, 20, 15)


def segmented_sequence(seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, list[range]]:
    """Frames in clearly distinct stretches (one expression held, then the next)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(len(SEGMENT_LENGTHS), DIM))
    frames, segments, start = [], [], 0
    for centre, length in zip(centres, SEGMENT_LENGTHS):
        frames.append(centre + noise * rng.normal(size=(length, DIM)))
        segments.append(range(start, start + length))
        start += length
    return np.concatenate(frames), segments


def segment_of(index: int, segments: list[range]) -> int:
    return next(s for s, seg in enumerate(segments) if index in seg)


def test_one_keyframe_per_distinct_segment_in_time_order():
    descriptors, segments = segmented_sequence()
    chosen = select_keyframes(descriptors, k=len(segments), seed=0)
    assert len(chosen) == len(segments)
    assert np.all(np.diff(chosen) > 0)
    assert [segment_of(int(i), segments) for i in chosen] == list(range(len(segments)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_deterministic_per_seed_and_robust_across_seeds(seed):
    descriptors, segments = segmented_sequence(seed=3)
    first = select_keyframes(descriptors, k=len(segments), seed=seed)
    again = select_keyframes(descriptors, k=len(segments), seed=seed)
    np.testing.assert_array_equal(first, again)
    assert sorted({segment_of(int(i), segments) for i in first}) == list(range(len(segments)))


def test_keyframe_is_the_frame_nearest_its_cluster_centre():
    # One stretch is symmetric about its middle frame, so that frame is its centre.
    rng = np.random.default_rng(5)
    centre = rng.normal(size=DIM)
    offsets = 0.05 * np.eye(DIM)[:6]
    stretch = np.concatenate([centre + offsets, centre[None], centre - offsets])  # middle: index 6
    other = rng.normal(size=DIM) + 0.05 * rng.normal(size=(10, DIM))
    chosen = select_keyframes(np.concatenate([stretch, other]), k=2, seed=0)
    assert chosen[0] == 6


def test_unusable_frames_are_never_chosen():
    descriptors, segments = segmented_sequence()
    usable = np.ones(len(descriptors), dtype=bool)
    usable[segments[1].start : segments[1].start + 25] = False  # most of segment 1 has no face
    descriptors[segments[3].start] = np.nan  # a frame without landmarks
    chosen = select_keyframes(descriptors, k=len(segments), usable=usable, seed=0)
    assert np.all(usable[chosen]) and np.all(np.isfinite(descriptors[chosen]))
    assert sorted({segment_of(int(i), segments) for i in chosen}) == list(range(len(segments)))


def test_fewer_usable_frames_than_k_returns_all_usable_frames():
    descriptors, _ = segmented_sequence()
    usable = np.zeros(len(descriptors), dtype=bool)
    usable[[40, 3, 71]] = True
    np.testing.assert_array_equal(select_keyframes(descriptors, k=9, usable=usable), [3, 40, 71])


def test_no_usable_frame_raises_too_few_frames_naming_the_clip():
    descriptors, _ = segmented_sequence()
    with pytest.raises(TooFewFramesError, match="clip.mp4"):
        select_keyframes(descriptors, k=9, usable=np.zeros(len(descriptors), bool), path="clip.mp4")


def test_rbf_kernel_median_heuristic_and_explicit_gamma():
    x = np.array([[0.0], [1.0], [3.0]])  # squared distances 1, 9, 4: median 4
    kernel, gamma = rbf_kernel(x)
    assert gamma == pytest.approx(0.25)
    assert kernel[0, 1] == pytest.approx(np.exp(-0.25)) and np.allclose(np.diag(kernel), 1.0)
    kernel, gamma = rbf_kernel(x, gamma=2.0)
    assert gamma == 2.0 and kernel[0, 2] == pytest.approx(np.exp(-18.0))
    descriptors, segments = segmented_sequence()
    chosen = select_keyframes(descriptors, k=len(segments), gamma=0.01, seed=0)
    assert len(chosen) == len(segments)


def test_descriptors_ignore_position_and_size():
    rng = np.random.default_rng(0)
    points = rng.uniform(100, 300, size=(4, 68, 2))
    moved = 2.5 * points + np.array([40.0, -70.0])
    descriptors = landmark_descriptors(points)
    assert descriptors.shape == (4, 136) and descriptors.dtype == np.float32
    np.testing.assert_allclose(landmark_descriptors(moved), descriptors, atol=1e-5)
    points[2] = np.nan
    assert np.isnan(landmark_descriptors(points)[2]).all()


def test_real_openface_track_gives_k_distinct_keyframes(shared_data):
    track, _ = read_openface_csv(shared_data / "openface-csv" / "OpenFace_Test.csv")
    chosen = select_keyframes(landmark_descriptors(track.points), k=9, usable=track.success, seed=0)
    assert len(chosen) == 9 and np.all(np.diff(chosen) > 0) and chosen[-1] < 100
