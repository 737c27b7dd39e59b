"""Speech features: load a clip's audio, 3D log-mel spectrogram, RACNN input.

``load_audio`` -> mono float32 waveform at the target rate;
``logmel`` -> ``(3, n_mels, T)`` static / delta / delta-delta log-mel (paper
Fig. 2), what the feature store keeps; ``racnn_input`` -> the network input
``(B, 3, D, size, size)``, computed in the training transform (on GPU too).

``racnn_input`` lives in :mod:`avser.features.racnn_input` (the only part that
needs torch, imported on first use) and stays importable from here.
"""

from __future__ import annotations

import importlib
import struct
import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from avser.errors import ConfigError, EmptyAudioError, TooShortAudioError, UnreadableMediaError
from avser.features.config import AudioConfig
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

_HINT_RECOPY = "the file is damaged or cut short; copy it again from the corpus"


def load_audio(
    path: str | Path,
    sample_rate: int = AudioConfig.sample_rate,
    *,
    silence_rms: float = AudioConfig.silence_rms,
    min_seconds: float = AudioConfig.min_seconds,
) -> np.ndarray:
    """Mono float32 waveform of ``path`` at ``sample_rate``.

    Reads wav/flac/mp3/ogg with soundfile, anything else (the audio track of
    mp4/avi/mov/mkv, m4a...) with PyAV. Channels are averaged. Raises
    :class:`MissingFileError`, :class:`UnreadableMediaError` (corrupt,
    truncated or unsupported), :class:`NoAudioTrackError` (a video without
    sound), :class:`EmptyAudioError` (no samples, or RMS below
    ``silence_rms``) or :class:`TooShortAudioError` (under ``min_seconds``).
    """
    path = Path(path)
    require_file(path)
    track = _read_with_soundfile(path) or decode_audio_track(path)
    wave = track.samples.mean(axis=0, dtype=np.float32)
    _check_not_empty(path, wave, silence_rms)
    _check_long_enough(path, len(wave) / track.sample_rate, min_seconds)
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


def _check_long_enough(path: Path, seconds: float, min_seconds: float) -> None:
    if seconds < min_seconds:
        raise TooShortAudioError(
            path,
            f"audio is {seconds:.3f} s long, shorter than audio.min_seconds {min_seconds:g} s",
            "drop the clip from the manifest, or lower audio.min_seconds",
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
    wave = load_audio(path, cfg.sample_rate, silence_rms=cfg.silence_rms,
                      min_seconds=cfg.min_seconds)
    return logmel(wave, cfg)


def __getattr__(name: str):
    """``racnn_input``, from :mod:`avser.features.racnn_input` (imports torch)."""
    if name != "racnn_input":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module("avser.features.racnn_input").racnn_input
