"""Feature-store rows -> model input tensors.

Pure NumPy/PyTorch (no Ray): the training loop, prediction and notebooks all
turn a batch of store rows into the same tensors. Resizing log-mels to the
RACNN input happens later, on the worker's device (``racnn_input``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from avser.data.store import decode_landmarks, decode_logmel
from avser.features.augment import SpeechAugmentConfig
from avser.features.config import RacnnInputConfig
from avser.features.faces import decode_jpeg
from avser.features.racnn_input import racnn_input
from avser.landmark_regions import N_LANDMARKS

# ImageNet statistics: what EfficientNet's (optional) pretrained weights expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class ModelInputs:
    """One batch: log-mels (variable length) and fixed-size visual tensors."""

    logmels: list[torch.Tensor]  # each (3, n_mels, T_i), float16
    faces: torch.Tensor  # (B, K, 3, S, S) float32, normalised; zeros without a face
    landmarks: torch.Tensor  # (B, K, 68, 2) float32; zeros without a face
    visual_mask: torch.Tensor  # (B,) bool: True where the clip has faces
    labels: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return len(self.logmels)

    def speech(self, device: torch.device, cfg: RacnnInputConfig,
               augment: SpeechAugmentConfig | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The RACNN input (B, 3, D, S, S), computed on ``device``; ``augment``
        only for training batches."""
        return racnn_input([m.to(device) for m in self.logmels], cfg,
                           augment=augment, generator=generator)

    def model_kwargs(self, device: torch.device, cfg: RacnnInputConfig,
                     with_speech: bool = True, augment: SpeechAugmentConfig | None = None,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of the full model's forward, on ``device``
        (``speech`` None for the vision-only variant)."""
        return {
            "speech": self.speech(device, cfg, augment, generator) if with_speech else None,
            "faces": self.faces.to(device),
            "landmarks": self.landmarks.to(device),
            "visual_mask": self.visual_mask.to(device),
        }


class FrameBatches:
    """Store rows in a pandas frame, batched as ``ray.data.DataIterator.iter_batches``
    batches them (numpy columns, optional seeded shuffle): the training loop
    runs on it without Ray (benchmarks, recipe search, notebooks)."""

    def __init__(self, frame) -> None:
        self.frame = frame.reset_index(drop=True)

    def iter_batches(self, batch_size: int, batch_format: str = "numpy",
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None):
        order = np.arange(len(self.frame))
        if local_shuffle_buffer_size:
            order = np.random.default_rng(local_shuffle_seed).permutation(order)
        for start in range(0, len(order), batch_size):
            rows = self.frame.iloc[order[start:start + batch_size]]
            yield {name: rows[name].to_numpy() for name in rows.columns}


def face_tensor(jpegs: Sequence[bytes], size: int) -> np.ndarray:
    """K JPEG crops -> (K, 3, size, size) float32, ImageNet-normalised."""
    images = []
    for data in jpegs:
        image = decode_jpeg(bytes(data))
        if image.shape[0] != size or image.shape[1] != size:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        images.append(image)
    stacked = np.stack(images).astype(np.float32) / 255.0
    return ((stacked - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)


def _row(batch: Mapping[str, Any], i: int) -> dict[str, Any]:
    return {key: values[i] for key, values in batch.items()}


def visual_arrays(clips: Sequence[tuple[np.ndarray | None, Sequence[bytes] | None]],
                  face_size: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces (N, K, 3, S, S), landmarks (N, K, 68, 2) and the visual mask (N,)
    of clips given as (keyframe landmarks, face JPEGs); zeros and False for a
    clip without a face."""
    n = len(clips)
    faces = np.zeros((n, k, 3, face_size, face_size), dtype=np.float32)
    landmarks = np.zeros((n, k, N_LANDMARKS, 2), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    for i, (points, jpegs) in enumerate(clips):
        if points is None or jpegs is None or len(jpegs) == 0:
            continue
        count = min(k, len(points))
        landmarks[i, :count] = points[:count]
        faces[i, :count] = face_tensor(list(jpegs)[:count], face_size)
        mask[i] = True
    return faces, landmarks, mask


def collate(
    batch: Mapping[str, Any], face_size: int, k: int, with_visual: bool = True
) -> ModelInputs:
    """Columns of store rows (as from ``iter_batches(batch_format="numpy")``).

    ``with_visual=False`` (speech pretraining) skips JPEG decoding; the visual
    tensors then stay zero and the mask False.
    """
    rows = [_row(batch, i) for i in range(len(batch["clip_id"]))]
    logmels = [torch.from_numpy(decode_logmel(row).copy()) for row in rows]
    visual = [(decode_landmarks(row), row.get("face_jpegs")) if with_visual else (None, None)
              for row in rows]
    faces, landmarks, mask = visual_arrays(visual, face_size, k)
    return ModelInputs(
        logmels=logmels,
        faces=torch.from_numpy(faces),
        landmarks=torch.from_numpy(landmarks),
        visual_mask=torch.from_numpy(mask),
        # A copy: Ray Data and pandas hand out read-only (zero-copy Arrow) arrays,
        # which torch warns about sharing.
        labels=torch.from_numpy(np.array(batch["label"], dtype=np.int64)),
    )

