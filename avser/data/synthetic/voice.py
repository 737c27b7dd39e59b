"""The synthetic corpus's voice: vowel-like voiced speech whose prosody carries the emotion.

A source-filter voice in additive form: the harmonics of a glottal pitch
contour, each weighted by a three-formant vowel envelope and a spectral
tilt, gated into syllables, plus breath, consonant bursts and room noise.
Emotion acts through prosody (pitch level, range, contour slope, tremor),
vocal effort (energy, tilt, breathiness) and tempo (syllable rate); the
speaker through base pitch and vocal-tract length. Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

# Prosody parameters, in the order of the per-emotion tables below.
PROSODY_KEYS = (
    "pitch_st",  # mean pitch, semitones above the speaker's base
    "range_st",  # height of the pitch accent on stressed syllables, semitones
    "slope_st",  # pitch change from start to end of the utterance, semitones
    "energy_db",  # vocal effort, dB relative to the neutral level
    "rate_hz",  # syllables per second
    "tilt",  # spectral tilt: harmonic k is weighted by k ** -tilt
    "breath",  # aspiration noise relative to the voiced signal
    "tremor_st",  # depth of a pitch tremor (a fear cue), semitones
)

NYQUIST_MARGIN = 0.45  # highest harmonic, as a fraction of the sample rate (no aliasing)
MIN_SYLLABLE_LENGTH = 0.5  # shortest syllable, relative to the mean length
SEMITONES_PER_OCTAVE = 12


def _default_prosody() -> dict[str, dict[str, float]]:
    rows = {
        #             pitch range slope energy rate  tilt breath tremor
        "neutral": (0.0, 1.5, -1.5, 0.0, 4.2, 1.30, 0.08, 0.00),
        "happy": (3.5, 4.0, 0.0, 4.0, 5.0, 0.90, 0.05, 0.00),
        "sad": (-2.5, 0.6, -3.5, -7.0, 3.0, 1.80, 0.30, 0.10),
        "angry": (2.5, 3.0, -3.0, 9.0, 5.4, 0.55, 0.04, 0.00),
        "fearful": (6.0, 1.2, 1.0, 0.0, 6.2, 1.30, 0.30, 0.80),
        "surprised": (5.0, 7.0, 6.0, 3.0, 3.6, 1.10, 0.10, 0.00),
    }
    return {name: dict(zip(PROSODY_KEYS, values)) for name, values in rows.items()}


def _default_prosody_noise() -> dict[str, float]:
    values = (0.5, 0.5, 0.6, 1.0, 0.25, 0.08, 0.03, 0.06)
    return dict(zip(PROSODY_KEYS, values))


def _default_speaker_prosody_sd() -> dict[str, float]:
    values = (0.6, 0.25, 0.3, 1.0, 0.2, 0.06, 0.02, 0.03)
    return dict(zip(PROSODY_KEYS, values))


def _default_vowels() -> dict[str, tuple[float, float, float]]:
    # Adult formant averages (Peterson & Barney style), Hz.
    return {
        "a": (730.0, 1090.0, 2440.0),
        "e": (530.0, 1840.0, 2480.0),
        "i": (270.0, 2290.0, 3010.0),
        "o": (570.0, 840.0, 2410.0),
        "u": (300.0, 870.0, 2240.0),
    }


@dataclass
class VoiceSynthConfig:
    prosody: dict[str, dict[str, float]] = field(default_factory=_default_prosody)
    # Per-clip scatter of each prosody parameter (the same emotion is never said twice alike).
    prosody_noise: dict[str, float] = field(default_factory=_default_prosody_noise)
    # Per-speaker habit: a fixed offset of each prosody parameter.
    speaker_prosody_sd: dict[str, float] = field(default_factory=_default_speaker_prosody_sd)
    male_f0_hz: tuple[float, float] = (95.0, 140.0)
    female_f0_hz: tuple[float, float] = (170.0, 240.0)
    # Vocal-tract length as a formant scale; shorter tracts (higher formants) for female voices.
    male_formant_scale: tuple[float, float] = (0.92, 1.02)
    female_formant_scale: tuple[float, float] = (1.05, 1.17)
    vowels: dict[str, tuple[float, float, float]] = field(default_factory=_default_vowels)
    formant_bandwidths_hz: tuple[float, float, float] = (90.0, 110.0, 170.0)
    formant_gains_db: tuple[float, float, float] = (0.0, -4.0, -10.0)
    # Spectral floor between formants, relative to a formant peak.
    formant_floor: float = 0.03
    max_harmonic_hz: float = 6000.0
    # Prosody and amplitudes are computed at this rate, then interpolated to audio rate.
    control_rate_hz: float = 200.0
    syllable_rate_min_hz: float = 1.5
    syllable_length_sd: float = 0.2  # relative
    voiced_fraction: tuple[float, float] = (0.55, 0.8)
    pause_probability: float = 0.12
    pause_s: tuple[float, float] = (0.1, 0.3)
    edge_silence_s: tuple[float, float] = (0.08, 0.3)
    stress_probability: float = 0.35
    # Exponent of the syllable's sine-shaped amplitude arch (smaller = flatter).
    syllable_shape: float = 0.6
    formant_glide_s: float = 0.03
    tremor_rate_hz: float = 6.0
    pitch_wander_st: float = 0.5
    pitch_wander_smooth_s: float = 0.15
    consonant_s: float = 0.04
    consonant_level: float = 0.35
    consonant_pole: float = -0.7  # one-pole filter; negative = hiss-like, bright noise
    breath_pole: float = 0.5  # one-pole filter; positive = dull, breathy noise
    room_noise_pole: float = 0.9  # brown-ish room rumble
    level_dbfs: float = -24.0
    recording_gain_sd_db: float = 1.0
    snr_db: tuple[float, float] = (12.0, 30.0)
    peak_limit: float = 0.99


@dataclass
class VoiceIdentity:
    """What makes one synthetic speaker sound like themself."""

    base_f0_hz: float
    formant_scale: float
    female: bool


@dataclass
class Syllable:
    start_s: float
    voiced_s: float
    vowel: str
    stressed: bool


def sample_voice_identity(
    cfg: VoiceSynthConfig, female: bool, rng: np.random.Generator
) -> VoiceIdentity:
    f0_range = cfg.female_f0_hz if female else cfg.male_f0_hz
    scale_range = cfg.female_formant_scale if female else cfg.male_formant_scale
    return VoiceIdentity(
        base_f0_hz=float(rng.uniform(*f0_range)),
        formant_scale=float(rng.uniform(*scale_range)),
        female=female,
    )


def plan_syllables(
    duration_s: float, prosody: dict[str, float], cfg: VoiceSynthConfig, rng: np.random.Generator
) -> list[Syllable]:
    """Syllable timing for one utterance; shared with the face so the lips move with the voice."""
    rate = max(prosody["rate_hz"], cfg.syllable_rate_min_hz)
    t = rng.uniform(*cfg.edge_silence_s)
    end = duration_s - rng.uniform(*cfg.edge_silence_s)
    vowels = sorted(cfg.vowels)
    syllables = []
    while True:
        length = max(rng.normal(1.0, cfg.syllable_length_sd), MIN_SYLLABLE_LENGTH) / rate
        if t + length > end:
            break
        syllables.append(
            Syllable(
                start_s=t,
                voiced_s=length * rng.uniform(*cfg.voiced_fraction),
                vowel=vowels[rng.integers(len(vowels))],
                stressed=bool(rng.random() < cfg.stress_probability),
            )
        )
        t += length
        if rng.random() < cfg.pause_probability:
            t += rng.uniform(*cfg.pause_s)
    return syllables


def syllable_envelope(syllables: list[Syllable], times: np.ndarray, shape: float) -> np.ndarray:
    """Vocal opening over time, 0..1: a sine arch over each syllable's voiced part."""
    env = np.zeros_like(times, dtype=np.float64)
    for syl in syllables:
        phase = (times - syl.start_s) / syl.voiced_s
        inside = (phase > 0) & (phase < 1)
        env[inside] = np.sin(np.pi * phase[inside]) ** shape
    return env


def _pitch_contour_st(
    syllables: list[Syllable], times: np.ndarray, duration_s: float, prosody: dict[str, float],
    cfg: VoiceSynthConfig, rng: np.random.Generator,
) -> np.ndarray:
    contour = prosody["pitch_st"] + prosody["slope_st"] * (times / duration_s - 0.5)
    for syl in (s for s in syllables if s.stressed):
        half = syl.voiced_s / 2
        accent = np.exp(-0.5 * ((times - syl.start_s - half) / half) ** 2)
        contour += prosody["range_st"] * accent
    tremor_phase = rng.uniform(0, 2 * np.pi)
    contour += prosody["tremor_st"] * np.sin(2 * np.pi * cfg.tremor_rate_hz * times + tremor_phase)
    smooth = cfg.pitch_wander_smooth_s * cfg.control_rate_hz
    wander = gaussian_filter1d(rng.normal(size=times.size), smooth)
    wander *= cfg.pitch_wander_st / max(np.std(wander), 1e-9)
    return contour + wander


def _formant_tracks(
    syllables: list[Syllable], times: np.ndarray, voice: VoiceIdentity, cfg: VoiceSynthConfig
) -> np.ndarray:
    """(T, 3) formant frequencies: each syllable's vowel, gliding between syllables."""
    neutral_vowel = np.mean(list(cfg.vowels.values()), axis=0)
    tracks = np.tile(neutral_vowel, (times.size, 1))
    for syl in syllables:
        tracks[times >= syl.start_s] = cfg.vowels[syl.vowel]
    tracks = gaussian_filter1d(tracks, cfg.formant_glide_s * cfg.control_rate_hz, axis=0)
    return tracks * voice.formant_scale


def _harmonic_amplitudes(
    f0: np.ndarray, formants: np.ndarray, tilt: float, cfg: VoiceSynthConfig, sample_rate: int
) -> np.ndarray:
    """(T, K) amplitude of harmonic k at each control step."""
    top = min(cfg.max_harmonic_hz, NYQUIST_MARGIN * sample_rate)
    k = np.arange(1, int(top / f0.min()) + 1)
    freqs = f0[:, None] * k[None, :]
    envelope = np.full(freqs.shape, cfg.formant_floor)
    formant_shapes = zip(cfg.formant_bandwidths_hz, cfg.formant_gains_db)
    for j, (bandwidth, gain_db) in enumerate(formant_shapes):
        detune = (freqs - formants[:, j : j + 1]) / (bandwidth / 2)
        envelope += 10 ** (gain_db / 20) / (1 + detune**2)
    amplitudes = envelope * k[None, :] ** (-tilt)
    amplitudes[freqs > top] = 0.0
    return amplitudes


def _to_audio_rate(
    control: np.ndarray, n_samples: int, control_rate: float, sample_rate: int
) -> np.ndarray:
    """Linear interpolation of a control-rate signal (T,) or (T, K) to audio rate."""
    position = np.arange(n_samples) * (control_rate / sample_rate)
    lower = np.minimum(position.astype(np.int64), control.shape[0] - 2)
    frac = (position - lower)[:, None] if control.ndim == 2 else position - lower
    return control[lower] * (1 - frac) + control[lower + 1] * frac


def _filtered_noise(n: int, pole: float, rng: np.random.Generator) -> np.ndarray:
    noise = lfilter([1.0], [1.0, -pole], rng.normal(size=n))
    return noise / max(np.std(noise), 1e-12)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)) + 1e-12)


def _voiced(
    syllables: list[Syllable], duration_s: float, prosody: dict[str, float], voice: VoiceIdentity,
    cfg: VoiceSynthConfig, sample_rate: int, rng: np.random.Generator,
) -> np.ndarray:
    """The harmonic (voiced) signal, before syllable gating."""
    n_samples = int(round(duration_s * sample_rate))
    rate = cfg.control_rate_hz
    times = np.arange(int(np.ceil(duration_s * rate)) + 2) / rate
    semitones = _pitch_contour_st(syllables, times, duration_s, prosody, cfg, rng)
    f0 = voice.base_f0_hz * 2 ** (semitones / SEMITONES_PER_OCTAVE)
    formants = _formant_tracks(syllables, times, voice, cfg)
    amplitudes = _harmonic_amplitudes(f0, formants, prosody["tilt"], cfg, sample_rate)
    phase = 2 * np.pi * np.cumsum(_to_audio_rate(f0, n_samples, rate, sample_rate)) / sample_rate
    # float32 halves the memory of the (samples x harmonics) arrays.
    amp_audio = _to_audio_rate(amplitudes.astype(np.float32), n_samples, rate, sample_rate)
    k = np.arange(1, amplitudes.shape[1] + 1, dtype=np.float32)
    harmonics = np.sin(phase.astype(np.float32)[:, None] * k[None, :]) * amp_audio
    return harmonics.sum(axis=1).astype(np.float64)


def synthesize_voice(
    syllables: list[Syllable], duration_s: float, prosody: dict[str, float], voice: VoiceIdentity,
    cfg: VoiceSynthConfig, sample_rate: int, rng: np.random.Generator,
) -> np.ndarray:
    """Mono float32 samples in [-1, 1] of one utterance."""
    n_samples = int(round(duration_s * sample_rate))
    times = np.arange(n_samples) / sample_rate
    env = syllable_envelope(syllables, times, cfg.syllable_shape)
    voiced = _voiced(syllables, duration_s, prosody, voice, cfg, sample_rate, rng) * env
    voiced /= _rms(voiced)
    breath = _filtered_noise(n_samples, cfg.breath_pole, rng) * env * max(prosody["breath"], 0.0)
    speech = voiced + breath + _consonants(syllables, times, cfg, rng)
    level_db = cfg.level_dbfs + prosody["energy_db"] + rng.normal(0, cfg.recording_gain_sd_db)
    speech *= 10 ** (level_db / 20) / _rms(speech)
    snr_db = rng.uniform(*cfg.snr_db)
    room_level = _rms(speech) * 10 ** (-snr_db / 20)
    room = _filtered_noise(n_samples, cfg.room_noise_pole, rng) * room_level
    audio = speech + room
    return np.clip(audio, -cfg.peak_limit, cfg.peak_limit).astype(np.float32)


def _consonants(
    syllables: list[Syllable], times: np.ndarray, cfg: VoiceSynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """A short bright noise burst before each vowel."""
    gate = np.zeros_like(times)
    for syl in syllables:
        phase = (times - (syl.start_s - cfg.consonant_s)) / cfg.consonant_s
        inside = (phase > 0) & (phase < 1)
        gate[inside] = np.sin(np.pi * phase[inside])
    return _filtered_noise(times.size, cfg.consonant_pole, rng) * gate * cfg.consonant_level
