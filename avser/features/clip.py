"""One manifest clip -> the arrays of one feature-store row.

Composes the per-modality functions (audio, video, landmarks, keyframes,
faces). Used by ``avser features CLIP`` and by the Ray Data preprocessing
job, which keeps one landmark backend per actor and passes it in.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from avser.data.manifest import Clip
from avser.features.audio import load_audio, logmel
from avser.features.config import FeatureConfig
from avser.features.faces import align_face, encode_jpeg, normalise_landmarks
from avser.features.keyframes import landmark_descriptors, select_keyframes
from avser.features.landmarks import LandmarkBackend, LandmarkTrack, require_face
from avser.features.video import VideoFrames, decode_video


@dataclass
class ClipFeatures:
    """Compact per-clip arrays (resizing to network input happens at train time)."""

    logmel: np.ndarray  # float16 (3, n_mels, T)
    face_jpegs: list[bytes] | None = None  # K aligned face crops
    landmarks: np.ndarray | None = None  # float32 (K, 68, 2), normalised
    keyframe_index: np.ndarray | None = None  # int (K,), frame indices in time order
    n_frames: int = 0
    face_fraction: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_visual(self) -> bool:
        return self.landmarks is not None


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def pad_keyframes(index: np.ndarray, k: int) -> np.ndarray:
    """Exactly ``k`` frame indices in time order.

    Kernel k-means returns fewer than K when a clip has fewer usable frames;
    repeating frames (spread evenly) keeps every row the same shape, which the
    AGRUs and the appearance CNN need for batching.
    """
    index = np.sort(np.asarray(index, dtype=np.int64))
    if len(index) >= k:
        return index[:k]
    picks = np.linspace(0, len(index) - 1, k).round().astype(np.int64)
    return index[picks]


def extract_audio(clip: Clip, cfg: FeatureConfig, timings: dict[str, float]) -> np.ndarray:
    source = clip.audio_path or clip.video_path
    with _timed(timings, "audio_s"):
        wave = load_audio(source, cfg.audio.sample_rate, silence_rms=cfg.audio.silence_rms,
                          min_seconds=cfg.audio.min_seconds)
        return logmel(wave, cfg.audio).astype(np.float16)


def extract_visual(
    video_path: str,
    cfg: FeatureConfig,
    landmarker: LandmarkBackend,
    timings: dict[str, float],
    csv_path: str | None = None,
) -> tuple[VideoFrames, LandmarkTrack, np.ndarray]:
    """Decode, track landmarks, pick keyframes; raises NoFaceError/TooFewFramesError."""
    with _timed(timings, "decode_s"):
        video = decode_video(video_path, cfg.video)
    with _timed(timings, "landmarks_s"):
        track = landmarker.track(video, video_path=video_path, csv_path=csv_path)
        require_face(track, video_path)
    with _timed(timings, "keyframes_s"):
        kf = cfg.keyframes
        chosen = select_keyframes(
            landmark_descriptors(track.points),
            kf.k,
            gamma=kf.gamma,
            max_iter=kf.max_iter,
            seed=kf.seed,
            usable=track.success,
            restarts=kf.restarts,
            path=video_path,
        )
        keyframes = pad_keyframes(chosen, kf.k)
    return video, track, keyframes


def extract_clip(
    clip: Clip, cfg: FeatureConfig, landmarker: LandmarkBackend | None = None
) -> ClipFeatures:
    """All features of one clip. A clip without ``video_path`` (or without a
    landmark backend) is audio-only: its visual fields stay None."""
    timings: dict[str, float] = {}
    features = ClipFeatures(logmel=extract_audio(clip, cfg, timings), timings=timings)
    if clip.video_path is None or landmarker is None:
        return features
    video, track, keyframes = extract_visual(
        clip.video_path, cfg, landmarker, timings, csv_path=clip.landmarks_path
    )
    with _timed(timings, "faces_s"):
        features.face_jpegs = [
            encode_jpeg(align_face(video.frames[i], track.points[i], cfg.faces), cfg.faces.jpeg_quality)
            for i in keyframes
        ]
        features.landmarks = normalise_landmarks(track.points[keyframes]).astype(np.float32)
    features.keyframe_index = keyframes
    features.n_frames = len(video)
    features.face_fraction = float(np.mean(track.success))
    return features
