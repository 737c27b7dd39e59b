"""Speech features: load a clip's audio, 3D log-mel spectrogram, RACNN input.

``load_audio`` -> mono float32 waveform at the target rate;
``logmel`` -> ``(3, n_mels, T)`` static / delta / delta-delta log-mel (paper
Fig. 2), what the feature store keeps; ``racnn_input`` -> the network input
``(B, 3, D, size, size)``, computed in the training transform (on GPU too).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from avser.errors import ConfigError, EmptyAudioError, UnreadableMediaError
from avser.features.config import AudioConfig, RacnnInputConfig
from avser.features.video import AudioTrack, decode_audio_track, require_file

# soxr's high-quality mode: band-limited, and fast enough for a whole corpus.
_RESAMPLER = "soxr_hq"
_MS_PER_SECOND = 1000.0
# Mel power spectrogram (squared magnitude), so 10*log10 of it is in dB.
_SPECTROGRAM_POWER = 2.0
# Absolute dB (re. full scale); loudness is normalised per utterance in racnn_input.
_DB_REFERENCE = 1.0
# A WAV file: "RIFF", its length, "WAVE", then chunks of (4-byte name, length, bytes).
_RIFF_HEADER = struct.Struct("<4sI4s")
_RIFF_CHUNK = struct.Struct("<4sI")
# Writers that stream a WAV leave its data length unknown with one of these.
_RIFF_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
# Too coarse for the normalisation sums (the store keeps float16): computed in float32.
_LOW_PRECISION = (torch.float16, torch.bfloat16)

_HINT_RECOPY = "the file is damaged or cut short; copy it again from the corpus"


# ---- loading ---------------------------------------------------------------


def load_audio(
    path: str | Path,
    sample_rate: int = AudioConfig.sample_rate,
    *,
    silence_rms: float = AudioConfig.silence_rms,
) -> np.ndarray:
    """Mono float32 waveform of ``path`` at ``sample_rate``.

    Reads wav/flac/mp3/ogg with soundfile, anything else (the audio track of
    mp4/avi/mov/mkv, m4a...) with PyAV. Channels are averaged. Raises
    :class:`MissingFileError`, :class:`UnreadableMediaError` (corrupt,
    truncated or unsupported), :class:`NoAudioTrackError` (a video without
    sound) or :class:`EmptyAudioError` (no samples, or RMS below
    ``silence_rms``).
    """
    path = Path(path)
    require_file(path)
    track = _read_with_soundfile(path) or decode_audio_track(path)
    wave = track.samples.mean(axis=0, dtype=np.float32)
    _check_not_empty(path, wave, silence_rms)
    if track.sample_rate != sample_rate:
        wave = librosa.resample(
            wave, orig_sr=track.sample_rate, target_sr=sample_rate, res_type=_RESAMPLER
        )
    return np.ascontiguousarray(wave, dtype=np.float32)


def _read_with_soundfile(path: Path) -> AudioTrack | None:
    """The file's samples, or None when libsndfile does not know its format."""
    try:
        sound = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError):
        return None  # not a libsndfile format (or a video container): PyAV tries
    with sound:
        stated_frames = sound.frames
        try:
            samples = sound.read(dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as exc:
            raise UnreadableMediaError(
                path, f"{sound.format} audio cannot be decoded ({exc})", _HINT_RECOPY
            ) from exc
        sample_rate = sound.samplerate
    if _riff_is_truncated(path) or len(samples) < stated_frames:
        raise UnreadableMediaError(
            path,
            f"truncated: only {len(samples) / sample_rate:.3f} s of audio decode; "
            "the file is shorter than its header states",
            _HINT_RECOPY,
        )
    return AudioTrack(samples=samples.T, sample_rate=sample_rate)


def _riff_is_truncated(path: Path) -> bool:
    """Whether a WAV file's ``data`` chunk runs past its end (libsndfile reads what is there)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_RIFF_HEADER.size)
        if len(head) < _RIFF_HEADER.size:
            return False
        tag, _, form = _RIFF_HEADER.unpack(head)
        if tag != b"RIFF" or form != b"WAVE":
            return False
        while chunk := handle.read(_RIFF_CHUNK.size):
            if len(chunk) < _RIFF_CHUNK.size:
                return False
            name, length = _RIFF_CHUNK.unpack(chunk)
            if name == b"data":
                return length not in _RIFF_UNKNOWN_SIZES and handle.tell() + length > size
            handle.seek(length + length % 2, 1)  # chunks are padded to even sizes
    return False


def _check_not_empty(path: Path, wave: np.ndarray, silence_rms: float) -> None:
    if wave.size == 0:
        raise EmptyAudioError(path, "audio has no samples", "drop the clip from the manifest")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < silence_rms:
        raise EmptyAudioError(
            path,
            f"audio is silent (RMS {rms:.2e} < audio.silence_rms {silence_rms:.0e})",
            "drop the clip, or lower audio.silence_rms if it is merely quiet",
        )


# ---- 3D log-mel --------------------------------------------------------------


def _frames_of(ms: float, sample_rate: int) -> int:
    return max(1, round(ms * sample_rate / _MS_PER_SECOND))


def logmel(wave: np.ndarray, cfg: AudioConfig | None = None) -> np.ndarray:
    """Static, delta and delta-delta log-mel of a mono waveform: float32 ``(3, n_mels, T)``.

    The waveform is cut at ``cfg.max_seconds``; ``T = 1 + samples // hop``.
    Values are dB (``10 log10`` of mel power, floored at ``cfg.power_floor``
    and at ``cfg.top_db`` below the clip's peak).
    """
    cfg = cfg or AudioConfig()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"logmel needs a mono waveform (1-D), got shape {wave.shape}")
    if wave.size == 0:
        raise EmptyAudioError(None, "waveform has no samples", "check the clip's audio")
    wave = wave[: int(cfg.max_seconds * cfg.sample_rate)]
    win_length = _frames_of(cfg.win_length_ms, cfg.sample_rate)
    if win_length > cfg.n_fft:
        raise ConfigError(
            f"audio.win_length_ms {cfg.win_length_ms} is {win_length} samples, "
            f"more than audio.n_fft {cfg.n_fft}; raise n_fft or shorten the window"
        )
    with warnings.catch_warnings():
        # A clip shorter than one FFT window is zero-padded, which is what we want.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        power = _mel_power(wave, win_length, cfg)
    static = librosa.power_to_db(power, ref=_DB_REFERENCE, amin=cfg.power_floor, top_db=cfg.top_db)
    # The default edge handling needs width <= T; a very short clip repeats its edges instead.
    mode = "interp" if static.shape[-1] >= cfg.delta_width else "nearest"
    delta = librosa.feature.delta(static, width=cfg.delta_width, order=1, mode=mode)
    delta2 = librosa.feature.delta(static, width=cfg.delta_width, order=2, mode=mode)
    return np.stack([static, delta, delta2]).astype(np.float32)


def _mel_power(wave: np.ndarray, win_length: int, cfg: AudioConfig) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=wave,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=_frames_of(cfg.hop_length_ms, cfg.sample_rate),
        win_length=win_length,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        power=_SPECTROGRAM_POWER,
    )


def load_logmel(path: str | Path, cfg: AudioConfig | None = None) -> np.ndarray:
    """:func:`load_audio` then :func:`logmel`, with one config."""
    cfg = cfg or AudioConfig()
    wave = load_audio(path, cfg.sample_rate, silence_rms=cfg.silence_rms)
    return logmel(wave, cfg)


# ---- RACNN input transform ---------------------------------------------------


def racnn_input(
    logmels: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    cfg: RacnnInputConfig | None = None,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The RACNN input ``(B, 3, D, size, size)`` from 3D log-mels.

    ``logmels`` is a sequence of ``(3, n_mels, T_i)`` arrays, or one padded
    batch ``(B, 3, n_mels, T)`` whose true lengths are ``lengths`` (all
    ``T`` when None).

    1. Per-utterance normalisation: each channel of each clip has its mean
       subtracted and is divided by its standard deviation, both over all
       mel bins and true frames of that clip (so padding never counts).
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

    Runs on the input's device. float16/bfloat16 input (the store keeps
    float16) is computed and returned in float32; float32/float64 stay as they are.
    """
    cfg = cfg or RacnnInputConfig()
    _check_racnn_config(cfg)
    batch, frames = _padded_batch(logmels, lengths)
    batch = _normalise_per_utterance(batch, frames, cfg.min_std)
    n_clips, channels, _, padded_len = batch.shape
    # Mel axis first (time untouched: equal in and out sizes sample every frame exactly).
    batch = F.interpolate(batch, size=(cfg.size, padded_len), mode="bilinear", align_corners=False)
    rows = batch.reshape(n_clips, channels * cfg.size, 1, padded_len)
    grid = _segment_grid(frames, padded_len, cfg).to(batch.dtype)
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


def _normalise_per_utterance(
    batch: torch.Tensor, frames: torch.Tensor, min_std: float
) -> torch.Tensor:
    """Zero mean, unit std per clip and channel, over true frames only; padding set to 0."""
    valid = torch.arange(batch.shape[-1], device=batch.device) < frames[:, None]
    valid = valid[:, None, None, :].to(batch.dtype)  # (B, 1, 1, T_max)
    count = frames.to(batch.dtype)[:, None, None, None] * batch.shape[2]
    mean = (batch * valid).sum(dim=(2, 3), keepdim=True) / count
    centred = (batch - mean) * valid
    std = (centred.square().sum(dim=(2, 3), keepdim=True) / count).sqrt()
    return centred / std.clamp_min(min_std)


def _segment_grid(frames: torch.Tensor, padded_len: int, cfg: RacnnInputConfig) -> torch.Tensor:
    """``grid_sample`` grid ``(B, 1, D * size, 2)``: where each output column reads in time."""
    # float64 so long clips place columns exactly; the grid is tiny.
    dtype = torch.float64
    length = frames.to(dtype)  # (B,)
    seg_len = length / (1.0 + (cfg.segments - 1) * (1.0 - cfg.overlap))
    seg_hop = seg_len * (1.0 - cfg.overlap)
    segment = torch.arange(cfg.segments, device=frames.device, dtype=dtype)
    column = torch.arange(cfg.size, device=frames.device, dtype=dtype) + 0.5
    # Continuous time (frame i spans [i, i+1)) of each output column's centre.
    time = seg_hop[:, None, None] * segment[None, :, None] + (
        seg_len[:, None, None] * column[None, None, :] / cfg.size
    )
    # Frame-index coordinates, clamped to the segment's first and last frame centres
    # as F.interpolate clamps at the edges of a segment cut out on its own.
    first = (seg_hop[:, None] * segment[None, :])[..., None]  # (B, D, 1)
    last = torch.maximum(first, first + seg_len[:, None, None] - 1.0)
    last = torch.minimum(last, (length - 1.0)[:, None, None])
    index = torch.minimum(torch.maximum(time - 0.5, first), last)
    x = (2.0 * index + 1.0) / padded_len - 1.0  # align_corners=False normalisation
    x = x.reshape(len(frames), 1, cfg.segments * cfg.size)
    return torch.stack([x, torch.zeros_like(x)], dim=-1)
