"""On-the-fly speech augmentation inside the RACNN input transform.

Everything here acts on a normalised, padded log-mel batch ``(B, C, M, T)``
on the worker's device, with random draws from one seeded
``torch.Generator`` (so an epoch's augmentation is reproducible):

- ``SpecAugment``-style time and frequency masks, filled with 0: after the
  per-utterance normalisation that is every channel's own mean, so the
  delta channels are not wrecked by one fill value for all three;
- tempo perturbation and a random time shift: the window of frames that the
  D segments cover is stretched and moved (``time_window``); the segment
  grid of :func:`avser.features.racnn_input.racnn_input` reads through it,
  so the perturbation costs nothing;
- vocal-tract-length perturbation: a piecewise-linear warp of the mel axis
  (``mel_source_rows``), read by the same bilinear resize that brings the
  ``M`` mel bins to the input size.

Mixup mixes whole inputs and labels, so it lives in the training loop
(:func:`mixup`). A config with every strength at zero is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.special import betaincinv

from avser.errors import ConfigError


@dataclass
class SpeechAugmentConfig:
    """Strengths of each augmentation; 0 switches one off (for ablations)."""

    enabled: bool = False
    time_masks: int = 2  # masks per clip
    time_mask_fraction: float = 0.1  # widest time mask, as a fraction of the clip's frames
    freq_masks: int = 2
    freq_mask_bins: int = 16  # widest frequency mask, in mel bins
    tempo: float = 0.1  # covered window scaled by a factor in [1 - tempo, 1 + tempo]
    shift: float = 0.1  # window centre moved by up to this fraction of the clip
    mel_warp: float = 0.1  # mel axis warped by a factor in [1 - mel_warp, 1 + mel_warp]
    # The mel warp is linear up to this fraction of the axis, then bends so the top stays.
    mel_warp_knee: float = 0.8

    def __post_init__(self) -> None:
        for name in ("time_masks", "freq_masks", "freq_mask_bins"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name}={getattr(self, name)} must be >= 0")
        for name in ("time_mask_fraction", "tempo", "shift", "mel_warp"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"augment.{name}={getattr(self, name)} must lie in [0, 1)")
        if not 0.0 < self.mel_warp_knee < 1.0:
            raise ConfigError(f"augment.mel_warp_knee={self.mel_warp_knee} must lie in (0, 1)")


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """(n,) float64 on the CPU: draws stay reproducible whatever the device."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def apply_masks(batch: torch.Tensor, frames: torch.Tensor, cfg: SpeechAugmentConfig,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Time and frequency masks set to 0 in a normalised batch ``(B, C, M, T)``;
    time masks lie inside each clip's true ``frames``."""
    n_clips, _, n_mels, padded = batch.shape
    keep = torch.ones(n_clips, n_mels, padded, dtype=torch.bool)
    length = frames.cpu().to(torch.float64)
    for _ in range(cfg.time_masks):
        width = (_uniform(n_clips, 0, cfg.time_mask_fraction, generator) * length).floor()
        start = (_uniform(n_clips, 0, 1, generator) * (length - width + 1)).floor()
        keep &= ~_band(start, width, padded)[:, None, :]
    for _ in range(cfg.freq_masks):
        width = _uniform(n_clips, 0, min(cfg.freq_mask_bins, n_mels) + 1, generator).floor()
        start = (_uniform(n_clips, 0, 1, generator) * (n_mels - width + 1)).floor()
        keep &= ~_band(start, width, n_mels)[:, :, None]
    return batch * keep[:, None].to(device=batch.device, dtype=batch.dtype)


def _band(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: True on ``[start, start + width)`` of each row."""
    index = torch.arange(size, dtype=torch.float64)
    return (index >= start[:, None]) & (index < (start + width)[:, None])


def time_window(frames: torch.Tensor, cfg: SpeechAugmentConfig | None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, span) in frames, float64 on ``frames``' device: the part of each
    clip that the segments cover. Without augmentation: (0, frames)."""
    length = frames.to(torch.float64)
    if cfg is None or not cfg.enabled:
        return torch.zeros_like(length), length
    n = len(frames)
    span = length * _uniform(n, 1.0 - cfg.tempo, 1.0 + cfg.tempo, generator).to(length.device)
    offset = length * _uniform(n, -cfg.shift, cfg.shift, generator).to(length.device)
    return (length - span) / 2.0 + offset, span


def mel_source_rows(n_mels: int, size: int, n_clips: int, cfg: SpeechAugmentConfig | None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, size) float64: the continuous mel position each output row reads
    (bin j spans [j, j + 1)); a factor of 1 is the plain bilinear resize."""
    rows = (torch.arange(size, dtype=torch.float64) + 0.5) * n_mels / size
    rows = rows.expand(n_clips, size)
    if cfg is None or not cfg.enabled or cfg.mel_warp == 0:
        return rows.clone()
    alpha = _uniform(n_clips, 1.0 - cfg.mel_warp, 1.0 + cfg.mel_warp, generator)[:, None]
    knee = cfg.mel_warp_knee * n_mels * torch.minimum(torch.ones_like(alpha), 1.0 / alpha)
    # Below the knee rows read alpha times higher; above it the line runs to (M, M).
    above = alpha * knee + (rows - knee) * (n_mels - alpha * knee) / (n_mels - knee)
    return torch.where(rows <= knee, alpha * rows, above)


def mixup(inputs: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): convex mixes of shuffled pairs, soft targets.
    ``alpha <= 0`` returns the inputs and one-hot targets unchanged."""
    targets = torch.nn.functional.one_hot(labels, n_classes).to(inputs.dtype)
    if alpha <= 0:
        return inputs, targets
    # torch's Beta takes no generator: draw it by the inverse CDF of a seeded uniform.
    lam = float(betaincinv(alpha, alpha, float(_uniform(1, 0, 1, generator))))
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    mixed = lam * inputs + (1.0 - lam) * inputs[order]
    return mixed, lam * targets + (1.0 - lam) * targets[order]
