"""The RACNN input ``(B, 3, D, size, size)`` from 3D log-mels: per-utterance
normalisation, D overlapping segments, each resized to ``size x size``.

Computed in the training transform, on the worker's device (GPU too); kept
apart from :mod:`avser.features.audio` so that loading audio and computing
log-mels (the Ray Data featurizers) never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avser.errors import ConfigError
from avser.features.augment import SpeechAugmentConfig, apply_masks, mel_source_rows, time_window
from avser.features.config import RacnnInputConfig

# Too coarse for the normalisation sums (the store keeps float16): computed in float32.
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# The static log-mel channel is 10 log10(power): dB -> natural log of power.
_NEPER_PER_DB = math.log(10.0) / 10.0


def racnn_input(
    logmels: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    cfg: RacnnInputConfig | None = None,
    lengths: Sequence[int] | torch.Tensor | None = None,
    augment: SpeechAugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The RACNN input ``(B, 3, D, size, size)`` from 3D log-mels.

    ``logmels`` is a sequence of ``(3, n_mels, T_i)`` arrays, or one padded
    batch ``(B, 3, n_mels, T)`` whose true lengths are ``lengths`` (all
    ``T`` when None).

    0. With ``cfg.trim_db``, leading and trailing silence is cut: the clip
       keeps its first to last frame whose energy (the static channel's mel
       power summed over bins) is within ``trim_db`` of its loudest frame's,
       widened by ``cfg.trim_pad_frames`` each side; what follows sees that
       span as the clip.
    1. Per-utterance normalisation: each channel of each clip has its mean
       subtracted and is divided by its standard deviation, both over all
       mel bins and true frames of that clip (so padding never counts);
       with ``cfg.bin_mean`` each mel bin has its own mean over the true
       frames subtracted instead.
    2. Segments: the utterance's ``T`` frames are cut into ``D`` segments of
       ``L = T / (1 + (D - 1)(1 - overlap))`` frames, starting every
       ``L (1 - overlap)`` frames: together they cover the utterance exactly,
       whatever ``T`` (a clip shorter than D frames is stretched, not padded).
    3. Each ``n_mels x L`` segment is resized to ``size x size`` bilinearly
       (``align_corners=False``, edges clamped to the segment: what
       ``F.interpolate`` does on each segment cut out on its own, exactly so
       when segment bounds fall on whole frames): the mel axis with
       ``F.interpolate``, the time axis by sampling every segment of every
       clip in one ``grid_sample`` call (no loop, any mix of lengths).

    ``augment`` (training only; :mod:`avser.features.augment`) masks the
    normalised log-mels, warps the mel axis in step 3 and stretches and moves
    the window that the segments of step 2 cover, with draws from
    ``generator``.

    Runs on the input's device. float16/bfloat16 input (the store keeps
    float16) is computed and returned in float32; float32/float64 stay as they are.
    """
    cfg = cfg or RacnnInputConfig()
    _check_racnn_config(cfg)
    augment = augment if augment is not None and augment.enabled else None
    batch, frames = _padded_batch(logmels, lengths)
    if cfg.trim_db is not None:
        batch, frames = trim_silence(batch, frames, cfg.trim_db, cfg.trim_pad_frames)
    batch = normalise_per_utterance(batch, frames, cfg.min_std, cfg.bin_mean)
    if augment is not None:
        batch = apply_masks(batch, frames, augment, generator)
    n_clips, channels, _, padded_len = batch.shape
    # Mel axis first (time untouched: equal in and out sizes sample every frame exactly).
    batch = _resize_mel_axis(batch, cfg.size, augment, generator)
    rows = batch.reshape(n_clips, channels * cfg.size, 1, padded_len)
    window = time_window(frames, augment, generator)
    grid = _segment_grid(frames, padded_len, cfg, window).to(batch.dtype)
    # grid_sample on a height-1 image: only the time axis is interpolated.
    out = F.grid_sample(rows, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(n_clips, channels, cfg.size, cfg.segments, cfg.size)
    return out.permute(0, 1, 3, 2, 4).contiguous()


def _check_racnn_config(cfg: RacnnInputConfig) -> None:
    if cfg.segments < 1 or cfg.size < 1:
        raise ConfigError(
            f"racnn_input.segments ({cfg.segments}) and .size ({cfg.size}) must be >= 1"
        )
    if not 0.0 <= cfg.overlap < 1.0:
        raise ConfigError(f"racnn_input.overlap must be in [0, 1), got {cfg.overlap}")
    if (cfg.trim_db is not None and cfg.trim_db <= 0) or cfg.trim_pad_frames < 0:
        raise ConfigError(f"racnn_input.trim_db ({cfg.trim_db}) must be > 0 or None and "
                          f".trim_pad_frames ({cfg.trim_pad_frames}) >= 0")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION or not dtype.is_floating_point else dtype


def _padded_batch(logmels, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, n_mels, T_max)`` in the compute dtype, and each clip's true length ``(B,)``."""
    if isinstance(logmels, torch.Tensor):
        if logmels.ndim != 4:
            raise ValueError(
                f"a batch of log-mels must be (B, 3, n_mels, T), got {tuple(logmels.shape)}"
            )
        batch = logmels.to(_compute_dtype(logmels.dtype))
        full = torch.full((batch.shape[0],), batch.shape[-1], device=batch.device)
        frames = full if lengths is None else torch.as_tensor(lengths, device=batch.device)
        return batch, frames.clamp(1, batch.shape[-1]).long()
    clips = [torch.as_tensor(clip) for clip in logmels]
    if not clips:
        raise ValueError("racnn_input needs at least one log-mel")
    shapes = {tuple(clip.shape[:-1]) for clip in clips}
    if len(shapes) != 1 or any(clip.ndim != 3 or clip.shape[-1] < 1 for clip in clips):
        raise ValueError(
            f"log-mels must all be (3, n_mels, T>=1) with the same n_mels, got {sorted(shapes)}"
        )
    first = clips[0]
    frames = torch.tensor([clip.shape[-1] for clip in clips], device=first.device)
    batch = first.new_zeros(
        (len(clips), *first.shape[:-1], int(frames.max())), dtype=_compute_dtype(first.dtype)
    )
    for index, clip in enumerate(clips):
        batch[index, ..., : clip.shape[-1]] = clip
    return batch, frames


def voiced_span(batch: torch.Tensor, frames: torch.Tensor, trim_db: float,
                pad_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first frame, length) ``(B,)`` of each clip's voiced span in ``(B, 3, n_mels, T)``:
    see step 0 of :func:`racnn_input`."""
    time = torch.arange(batch.shape[-1], device=batch.device)
    valid = time < frames[:, None]
    energy = torch.logsumexp(batch[:, 0] * _NEPER_PER_DB, dim=1).masked_fill(~valid, -math.inf)
    peak = energy.max(dim=1, keepdim=True).values
    voiced = energy >= peak - trim_db * _NEPER_PER_DB
    first = torch.where(voiced, time, batch.shape[-1]).min(dim=1).values
    last = torch.where(voiced, time, -1).max(dim=1).values
    first = (first - pad_frames).clamp_min(0)
    last = torch.minimum(last + pad_frames, frames - 1)
    return first, last - first + 1


def trim_silence(batch: torch.Tensor, frames: torch.Tensor, trim_db: float,
                 pad_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip of ``(B, 3, n_mels, T)`` moved to start at its voiced span, and
    the span's length. Frames past it are left as they fall; from here on
    they count as padding."""
    first, length = voiced_span(batch, frames, trim_db, pad_frames)
    time = torch.arange(batch.shape[-1], device=batch.device)
    index = (first[:, None] + time[None, :]).clamp_max(batch.shape[-1] - 1)
    return batch.gather(-1, index[:, None, None, :].expand_as(batch)), length


def normalise_per_utterance(
    batch: torch.Tensor, frames: torch.Tensor, min_std: float, bin_mean: bool = False
) -> torch.Tensor:
    """Zero mean (per clip and channel, or per mel bin too), unit std per clip
    and channel, over true frames only; padding set to 0."""
    valid = torch.arange(batch.shape[-1], device=batch.device) < frames[:, None]
    valid = valid[:, None, None, :].to(batch.dtype)  # (B, 1, 1, T_max)
    mean_dims = (3,) if bin_mean else (2, 3)
    mean_count = frames.to(batch.dtype)[:, None, None, None] * math.prod(
        batch.shape[d] for d in mean_dims if d != 3)
    mean = (batch * valid).sum(dim=mean_dims, keepdim=True) / mean_count
    centred = (batch - mean) * valid
    count = frames.to(batch.dtype)[:, None, None, None] * batch.shape[2]
    std = (centred.square().sum(dim=(2, 3), keepdim=True) / count).sqrt()
    return centred / std.clamp_min(min_std)


def _resize_mel_axis(batch: torch.Tensor, size: int, augment: SpeechAugmentConfig | None,
                     generator: torch.Generator | None) -> torch.Tensor:
    """``(B, C, M, T)`` -> ``(B, C, size, T)``, bilinear; a mel warp reads warped rows."""
    n_clips, _, n_mels, padded_len = batch.shape
    if augment is None or augment.mel_warp == 0:
        return F.interpolate(batch, size=(size, padded_len), mode="bilinear", align_corners=False)
    source = mel_source_rows(n_mels, size, n_clips, augment, generator).to(batch.device)
    index = (source - 0.5).clamp(0.0, n_mels - 1.0)  # F.interpolate's edge clamp
    y = (2.0 * index + 1.0) / n_mels - 1.0  # (B, size)
    x = (2.0 * torch.arange(padded_len, device=batch.device, dtype=y.dtype) + 1.0) / padded_len - 1.0
    grid = torch.stack(torch.broadcast_tensors(x[None, None, :], y[:, :, None]), dim=-1)
    return F.grid_sample(batch, grid.to(batch.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _segment_grid(frames: torch.Tensor, padded_len: int, cfg: RacnnInputConfig,
                  window: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``grid_sample`` grid ``(B, 1, D * size, 2)``: where each output column reads in time.

    ``window`` (start, span) in frames is the part of each clip the segments
    cover (default: all of it); reads beyond the clip repeat its edge frames.
    """
    # float64 so long clips place columns exactly; the grid is tiny.
    dtype = torch.float64
    clip_len = frames.to(dtype)  # (B,)
    start, length = window if window is not None else (torch.zeros_like(clip_len), clip_len)
    start, length = start.to(dtype), length.to(dtype)
    seg_len = length / (1.0 + (cfg.segments - 1) * (1.0 - cfg.overlap))
    seg_hop = seg_len * (1.0 - cfg.overlap)
    segment = torch.arange(cfg.segments, device=frames.device, dtype=dtype)
    column = torch.arange(cfg.size, device=frames.device, dtype=dtype) + 0.5
    # Continuous time (frame i spans [i, i+1)) of each output column's centre.
    first = (start[:, None] + seg_hop[:, None] * segment[None, :])[..., None]  # (B, D, 1)
    time = first + seg_len[:, None, None] * column[None, None, :] / cfg.size
    # Frame-index coordinates, clamped to the segment's first and last frame centres
    # as F.interpolate clamps at the edges of a segment cut out on its own.
    last = torch.maximum(first, first + seg_len[:, None, None] - 1.0)
    last = torch.minimum(last, (start + length - 1.0)[:, None, None])
    index = torch.minimum(torch.maximum(time - 0.5, first), last)
    index = index.clamp(torch.zeros_like(clip_len)[:, None, None], (clip_len - 1.0)[:, None, None])
    x = (2.0 * index + 1.0) / padded_len - 1.0  # align_corners=False normalisation
    x = x.reshape(len(frames), 1, cfg.segments * cfg.size)
    return torch.stack([x, torch.zeros_like(x)], dim=-1)
