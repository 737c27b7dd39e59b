"""Keyframe selection: kernel k-means with an RBF kernel over per-frame descriptors.

The paper picks K representative frames per clip by clustering frames in an
RBF feature space; each cluster contributes the frame nearest its centre.
Everything is computed from the kernel matrix (no explicit feature map), so a
clip of N frames costs O(N^2) memory, fine for clips of a few hundred frames.
"""

from __future__ import annotations

import numpy as np

from avser.errors import TooFewFramesError
from avser.features.config import KeyframeConfig

# Eye landmarks (0-based, 68-point scheme): right eye 36-41, left eye 42-47.
_RIGHT_EYE = slice(36, 42)
_LEFT_EYE = slice(42, 48)
# Below this inter-ocular distance (relative to the shape's RMS size) the eyes
# are degenerate (a collapsed or synthetic shape); scale by RMS size instead.
_MIN_IOD_FRACTION = 1e-3
# k-means restarts from different seeded starts; the best (lowest within-cluster
# spread) wins, which guards against a poor k-means++ draw.
DEFAULT_RESTARTS = KeyframeConfig.restarts


def landmark_descriptors(points: np.ndarray) -> np.ndarray:
    """``(N, 68, 2)`` landmarks -> ``(N, 136)`` float32 shape descriptors.

    Each frame is centred on its mean point and divided by its inter-ocular
    distance (RMS size when the eyes coincide), so head position and distance
    to the camera do not drive the clustering; expression and pose do. Frames
    without landmarks (NaN) stay NaN.
    """
    points = np.asarray(points, dtype=np.float64)
    centred = points - points.mean(axis=1, keepdims=True)
    eye_line = points[:, _LEFT_EYE].mean(axis=1) - points[:, _RIGHT_EYE].mean(axis=1)
    iod = np.linalg.norm(eye_line, axis=1)
    rms = np.sqrt((centred**2).sum(axis=2).mean(axis=1))
    with np.errstate(invalid="ignore"):
        scale = np.where(iod > _MIN_IOD_FRACTION * rms, iod, rms)
    scale = np.where(scale > 0, scale, 1.0)
    return (centred / scale[:, None, None]).reshape(len(points), -1).astype(np.float32)


def rbf_kernel(x: np.ndarray, gamma: float | None = None) -> tuple[np.ndarray, float]:
    """RBF kernel matrix ``exp(-gamma ||xi - xj||^2)`` and the gamma used.

    ``gamma`` None -> 1 / median of the pairwise squared distances (the usual
    heuristic: a typical pair of frames has kernel value exp(-1)).
    """
    x = np.asarray(x, dtype=np.float64)
    squared = (x**2).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0)
    if gamma is None:
        off_diagonal = distances[~np.eye(len(x), dtype=bool)]
        positive = off_diagonal[off_diagonal > 0]
        gamma = 1.0 / float(np.median(positive)) if len(positive) else 1.0
    return np.exp(-gamma * distances), float(gamma)


def _distances_to_centres(kernel: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` squared distances ||phi(x_i) - mu_c||^2 from the kernel alone.

    ||phi(x) - mu_c||^2 = K(x,x) - 2/|c| sum_j K(x,j) + 1/|c|^2 sum_jl K(j,l);
    an empty cluster is infinitely far.
    """
    members = np.zeros((len(kernel), k))
    members[np.arange(len(kernel)), labels] = 1.0
    sizes = members.sum(axis=0)
    safe = np.where(sizes > 0, sizes, 1.0)
    summed = kernel @ members  # (N, k): sum_j K(x, j) over each cluster
    cross = summed / safe
    within = (summed * members).sum(axis=0) / safe**2
    distances = np.diag(kernel)[:, None] - 2.0 * cross + within[None, :]
    return np.where(sizes > 0, np.maximum(distances, 0.0), np.inf)


def _kmeans_plus_plus(kernel: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Initial labels: k seed frames drawn k-means++ style (far apart in kernel space)."""
    n = len(kernel)
    seeds = [int(rng.integers(n))]
    nearest = np.diag(kernel) + kernel[seeds[0], seeds[0]] - 2.0 * kernel[:, seeds[0]]
    for _ in range(1, k):
        weights = np.maximum(nearest, 0.0)
        total = weights.sum()
        candidates = np.setdiff1d(np.arange(n), seeds)
        if total <= 0:  # every frame sits on a seed: take the first unused frame
            seeds.append(int(candidates[0]))
        else:
            seeds.append(int(rng.choice(n, p=weights / total)))
        seed = seeds[-1]
        nearest = np.minimum(nearest, np.diag(kernel) + kernel[seed, seed] - 2.0 * kernel[:, seed])
    to_seed = np.diag(kernel)[:, None] + np.diag(kernel)[seeds][None, :] - 2.0 * kernel[:, seeds]
    return np.argmin(to_seed, axis=1)


def _refill_empty(distances: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Give each empty cluster the frame farthest from its own centre."""
    labels = labels.copy()
    for cluster in range(k):
        if np.any(labels == cluster):
            continue
        own = distances[np.arange(len(labels)), labels]
        shared = np.bincount(labels, minlength=k)[labels] > 1
        own = np.where(shared, own, -np.inf)  # never empty another cluster
        labels[int(np.argmax(own))] = cluster
    return labels


def kernel_kmeans(
    kernel: np.ndarray, k: int, max_iter: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Labels ``(N,)`` and within-cluster spread of one kernel k-means run."""
    labels = _kmeans_plus_plus(kernel, k, rng)
    for _ in range(max_iter):
        distances = _distances_to_centres(kernel, labels, k)
        updated = _refill_empty(distances, np.argmin(distances, axis=1), k)
        if np.array_equal(updated, labels):
            break
        labels = updated
    distances = _distances_to_centres(kernel, labels, k)
    return labels, float(distances[np.arange(len(labels)), labels].sum())


def select_keyframes(
    descriptors: np.ndarray,
    k: int,
    gamma: float | None = None,
    max_iter: int = 50,
    seed: int = 0,
    usable: np.ndarray | None = None,
    *,
    restarts: int = DEFAULT_RESTARTS,
    path: str | None = None,
) -> np.ndarray:
    """Indices of up to ``k`` keyframes, in time order.

    Clusters the usable frames (``usable`` True and descriptor finite) with
    RBF-kernel k-means and returns, per cluster, the member nearest its
    centre in kernel space. Deterministic for a given ``seed``. With ``k`` or
    fewer usable frames every usable frame is returned, so the result may be
    shorter than ``k``: the caller pads (``avser.features.clip.pad_keyframes``).
    Raises :class:`TooFewFramesError` when no frame is usable (``path`` names
    the clip in the message).
    """
    descriptors = np.asarray(descriptors, dtype=np.float64)
    if k < 1:
        raise ValueError(f"keyframes.k must be >= 1, got {k}")
    mask = np.all(np.isfinite(descriptors), axis=1)
    if usable is not None:
        mask &= np.asarray(usable, dtype=bool)
    candidates = np.flatnonzero(mask)
    if len(candidates) == 0:
        raise TooFewFramesError(
            path,
            f"none of {len(descriptors)} frames has usable landmarks to pick keyframes from",
            "check the clip shows a face, or lower landmarks.min_confidence",
        )
    if len(candidates) <= k:
        return candidates
    kernel, _ = rbf_kernel(descriptors[candidates], gamma)
    rng = np.random.default_rng(seed)
    runs = [kernel_kmeans(kernel, k, max_iter, rng) for _ in range(max(restarts, 1))]
    labels, _ = min(runs, key=lambda run: run[1])
    distances = _distances_to_centres(kernel, labels, k)
    chosen = []
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        chosen.append(members[np.argmin(distances[members, cluster])])
    return np.unique(candidates[chosen])
