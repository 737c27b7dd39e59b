"""Audio loading, 3D log-mel and the RACNN input transform (avser.features.audio)."""

from __future__ import annotations

from pathlib import Path

import av
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from avser.errors import (
    ConfigError,
    EmptyAudioError,
    MissingFileError,
    NoAudioTrackError,
    TooShortAudioError,
    UnreadableMediaError,
)
from avser.features.audio import load_audio, load_logmel, logmel, racnn_input
from avser.features.config import AudioConfig, RacnnInputConfig
from avser.features.racnn_input import trim_silence
from avser.models.config import ModelConfig, RACNNConfig
from avser.models.factory import racnn_input_config

STEREO_48K = "ravdess-speech-48k-originals/03-01-02-01-01-02-01.wav"
SPEECH_16K = "ravdess-speech-16k/Actor_01/03-01-01-01-01-01-01.flac"
TONE_HZ = 440.0


def sine(seconds: float, rate: int, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_mute_video(path: Path, n_frames: int = 5) -> Path:
    """An H.264 mp4 with a video stream and no audio stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            pixels = np.full((48, 64, 3), 10 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def normalised(x: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean / unit std over (mel, time) of one (3, n_mels, T) log-mel."""
    mean = x.mean(dim=(1, 2), keepdim=True)
    return (x - mean) / x.std(dim=(1, 2), unbiased=False, keepdim=True)


# ---- load_audio ---------------------------------------------------------------


def test_sine_wav_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, sine(1.5, 22050), 22050)
    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 24000
    assert peak_hz(wave, 16000) == pytest.approx(TONE_HZ, abs=1.0)


def test_flac_at_target_rate_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    tone = sine(1.0, 16000)
    sf.write(path, tone, 16000)
    np.testing.assert_allclose(load_audio(path, 16000), tone, atol=1e-4)  # 16-bit rounding


def test_stereo_is_averaged(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = sine(1.0, 16000, 300.0), sine(1.0, 16000, 700.0)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000), (left + right) / 2, atol=1e-6)


def test_mp3_through_soundfile(tmp_path: Path) -> None:
    path = tmp_path / "tone.mp3"
    sf.write(path, sine(1.0, 16000), 16000)
    wave = load_audio(path)
    assert abs(len(wave) - 16000) < 1200  # mp3 frames pad the ends
    assert peak_hz(wave, 16000) == pytest.approx(TONE_HZ, abs=2.0)


def test_m4a_falls_back_to_pyav(tmp_path: Path) -> None:
    path = tmp_path / "tone.m4a"
    rate = 44100
    tone = sine(1.0, rate)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    wave = load_audio(path, 16000)
    assert len(wave) / 16000 == pytest.approx(1.0, abs=0.06)
    assert peak_hz(wave, 16000) == pytest.approx(TONE_HZ, abs=2.0)


def test_real_stereo_48k_becomes_mono_16k(shared_data: Path) -> None:
    path = shared_data / STEREO_48K
    wave = load_audio(path)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - sf.info(path).frames / 3) <= 1
    assert 0.01 < np.abs(wave).max() <= 1.0


def test_real_16k_flac(shared_data: Path) -> None:
    path = shared_data / SPEECH_16K
    wave = load_audio(path)
    assert len(wave) == sf.info(path).frames
    assert np.sqrt(np.mean(wave**2)) > AudioConfig.silence_rms


def test_audio_track_of_a_video(shared_data: Path) -> None:
    wave = load_audio(shared_data / "face-videos/single_face.mp4")
    assert len(wave) / 16000 == pytest.approx(2.42, abs=0.01)
    assert np.sqrt(np.mean(wave**2)) > AudioConfig.silence_rms


# ---- load_audio on bad files: each error is typed and names the file ------------


def assert_raises_naming(error: type[Exception], path: Path, match: str | None = None) -> None:
    with pytest.raises(error, match=match) as caught:
        load_audio(path)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    assert_raises_naming(MissingFileError, tmp_path / "gone.wav", "does not exist")


def test_truncated_wav(shared_data: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.wav"
    cut.write_bytes((shared_data / STEREO_48K).read_bytes()[:20000])
    assert_raises_naming(UnreadableMediaError, cut, "truncated")


def test_truncated_flac(shared_data: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.flac"
    cut.write_bytes((shared_data / SPEECH_16K).read_bytes()[:4096])
    assert_raises_naming(UnreadableMediaError, cut)


def test_wav_with_only_metadata_cut_still_loads(shared_data: Path, tmp_path: Path) -> None:
    # The RAVDESS originals end in metadata chunks; losing those loses no audio.
    source = shared_data / STEREO_48K
    cut = tmp_path / "cut.wav"
    cut.write_bytes(source.read_bytes()[:-10])
    np.testing.assert_array_equal(load_audio(cut), load_audio(source))


def test_zero_length_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    assert_raises_naming(EmptyAudioError, path, "no samples")


def test_silent_wav(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    assert_raises_naming(EmptyAudioError, path, "silent")


def test_audio_shorter_than_min_seconds_is_too_short(tmp_path: Path) -> None:
    """25 ms of tone made 3 log-mel frames that the RACNN input stretched to 224."""
    path = tmp_path / "blip.wav"
    sf.write(path, sine(0.025, 16000), 16000)
    with pytest.raises(TooShortAudioError, match=r"0\.025 s long.*audio\.min_seconds 0\.5") as caught:
        load_audio(path)
    assert str(path) in str(caught.value) and caught.value.reason == "too_short"
    with pytest.raises(TooShortAudioError, match="blip.wav"):
        load_logmel(path, AudioConfig())
    # The minimum is a config value: lowered, the clip loads.
    assert len(load_audio(path, min_seconds=0.02)) == 400
    assert load_logmel(path, AudioConfig(min_seconds=0.0)).shape[-1] == 3


def test_min_seconds_at_another_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "short48k.wav"
    sf.write(path, sine(0.6, 48000), 48000)
    assert len(load_audio(path, 16000)) == pytest.approx(0.6 * 16000, abs=2)
    sf.write(path, sine(0.4, 48000), 48000)
    assert_raises_naming(TooShortAudioError, path, "0.400 s")


def test_real_video_with_a_silent_track(shared_data: Path) -> None:
    assert_raises_naming(EmptyAudioError, shared_data / "face-videos/WolfgangLanger_Pexels.mp4")


def test_video_without_audio_track(tmp_path: Path) -> None:
    assert_raises_naming(NoAudioTrackError, write_mute_video(tmp_path / "mute.mp4"), "no audio")


def test_text_file_renamed(tmp_path: Path) -> None:
    for name in ("notes.wav", "notes.mp4"):
        fake = tmp_path / name
        fake.write_text("not audio at all\n" * 100)
        assert_raises_naming(UnreadableMediaError, fake)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.flac"
    path.write_bytes(b"")
    assert_raises_naming(UnreadableMediaError, path, "empty")


# ---- logmel ---------------------------------------------------------------------


def test_logmel_shape_and_values() -> None:
    cfg = AudioConfig()
    feats = logmel(sine(1.0, cfg.sample_rate), cfg)
    assert feats.shape == (3, cfg.n_mels, 101) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # The tone's energy lands in the mel band holding 440 Hz.
    edges = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.sample_rate / 2)
    centres = edges[1:-1]
    loudest = feats[0].mean(axis=1).argmax()
    assert abs(centres[loudest] - TONE_HZ) < 40.0
    # A steady tone: deltas vanish away from the padded edges.
    assert np.abs(feats[1:, loudest, 10:-10]).max() < 0.5


def test_logmel_is_cut_at_max_seconds() -> None:
    cfg = AudioConfig(max_seconds=2.0)
    feats = logmel(np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype(np.float32), cfg)
    assert feats.shape[-1] == 201


@pytest.mark.parametrize("samples", [1, 100, 800, 1600])
def test_logmel_of_very_short_clips(samples: int) -> None:
    wave = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
    feats = logmel(wave)
    assert feats.shape == (3, 128, 1 + samples // 160)
    assert np.isfinite(feats).all()


def test_logmel_config_checks() -> None:
    with pytest.raises(ConfigError, match="n_fft"):
        logmel(sine(0.5, 16000), AudioConfig(n_fft=256, win_length_ms=25.0))
    with pytest.raises(EmptyAudioError):
        logmel(np.zeros(0, dtype=np.float32))


def test_load_logmel_real_speech(shared_data: Path) -> None:
    cfg = AudioConfig(n_mels=64)
    path = shared_data / SPEECH_16K
    feats = load_logmel(path, cfg)
    assert feats.shape == (3, 64, 1 + sf.info(path).frames // 160)
    assert np.isfinite(feats).all()
    assert feats[0].max() - feats[0].min() > 30.0  # speech and pauses: a real dynamic range


# ---- racnn_input ------------------------------------------------------------------


def random_logmels(lengths: list[int], n_mels: int = 128) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, n_mels, t, generator=gen) * 20 - 40 for t in lengths]


def test_racnn_input_shape_for_varied_lengths() -> None:
    out = racnn_input(random_logmels([1, 2, 5, 37, 331, 801]))
    assert out.shape == (6, 3, 9, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_segments_are_resized_crops_covering_the_utterance() -> None:
    # T = 100, D = 9, overlap 0.5 -> segments of 20 frames every 10 frames.
    (clip,) = random_logmels([100])
    out = racnn_input([clip])[0]
    norm = normalised(clip)
    for d in range(9):
        crop = norm[None, :, :, 10 * d : 10 * d + 20]
        expected = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out[:, d], expected, atol=1e-4, rtol=1e-4)


def test_one_segment_is_a_plain_resize() -> None:
    (clip,) = random_logmels([77])
    out = racnn_input([clip], RacnnInputConfig(segments=1, size=64))[0, :, 0]
    expected = F.interpolate(
        normalised(clip)[None], size=(64, 64), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out, expected[0], atol=1e-4, rtol=1e-4)


def test_padding_and_batch_mates_do_not_change_a_clip() -> None:
    cfg = RacnnInputConfig(size=32)
    short, long = random_logmels([40, 300])
    alone = racnn_input([short], cfg)
    together = racnn_input([short, long], cfg)
    # Equal up to float summation order (the padded batch sums over more zeros).
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=1e-4)
    padded = torch.zeros(2, 3, 128, 300)
    padded[0, ..., :40], padded[1] = short, long
    torch.testing.assert_close(
        racnn_input(padded, cfg, lengths=[40, 300]), together, atol=1e-4, rtol=1e-4
    )


def test_per_utterance_normalisation() -> None:
    (clip,) = random_logmels([50])
    out = racnn_input([clip * 3 + 100], RacnnInputConfig(size=16))
    reference = racnn_input([clip], RacnnInputConfig(size=16))
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    constant = racnn_input([torch.full((3, 128, 10), -80.0)], RacnnInputConfig(size=8))
    assert torch.count_nonzero(constant) == 0


def test_float16_is_computed_in_float32() -> None:
    cfg = RacnnInputConfig(size=64)
    clips = random_logmels([120, 30])
    reference = racnn_input(clips, cfg)
    half = racnn_input([clip.half() for clip in clips], cfg)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, atol=0.02, rtol=0.0)
    batched = racnn_input(torch.stack([clips[0][..., :30].half(), clips[1].half()]), cfg)
    assert batched.dtype == torch.float32


def test_numpy_float16_from_the_store() -> None:
    stored = logmel(sine(0.5, 16000)).astype(np.float16)
    assert racnn_input([stored], RacnnInputConfig(size=32)).shape == (1, 3, 9, 32, 32)


def test_racnn_input_is_deterministic() -> None:
    clips = random_logmels([10, 200])
    torch.testing.assert_close(racnn_input(clips), racnn_input(clips), atol=0.0, rtol=0.0)


def test_racnn_input_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        racnn_input(random_logmels([10]), RacnnInputConfig(overlap=1.0))
    with pytest.raises(ValueError, match="n_mels"):
        racnn_input(random_logmels([10], 64) + random_logmels([10], 128))
    with pytest.raises(ValueError):
        racnn_input([])


def clip_in_silence(speech: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``speech`` (3, M, T) with ``before`` and ``after`` frames of -80 dB around it."""
    channels, n_mels, _ = speech.shape
    quiet = torch.full((channels, n_mels, before), -80.0), torch.full((channels, n_mels, after), -80.0)
    return torch.cat([quiet[0], speech, quiet[1]], dim=-1)


def test_trim_silence_keeps_the_voiced_span_and_its_margin() -> None:
    (speech,) = random_logmels([30])
    speech[0] = speech[0].clamp(-20.0, 0.0)  # loud: every frame within 30 dB of the peak
    clips = [clip_in_silence(speech, 40, 25), clip_in_silence(speech, 0, 3)]
    batch = torch.zeros(2, 3, 128, 95)
    batch[0], batch[1, ..., :33] = clips[0], clips[1]
    moved, frames = trim_silence(batch, torch.tensor([95, 33]), trim_db=30.0, pad_frames=2)
    assert frames.tolist() == [34, 32]  # 2 frames of margin each side, clamped at the clip's start
    torch.testing.assert_close(moved[0, ..., 2:32], speech)
    torch.testing.assert_close(moved[1, ..., :30], speech)


def test_trimmed_input_ignores_the_silence_around_speech() -> None:
    (speech,) = random_logmels([60])
    speech[0] = speech[0].clamp(-20.0, 0.0)
    cfg = RacnnInputConfig(size=32, trim_db=30.0, trim_pad_frames=0)
    padded = racnn_input([clip_in_silence(speech, 50, 70)], cfg)
    torch.testing.assert_close(padded, racnn_input([speech], cfg), atol=1e-4, rtol=1e-4)
    untrimmed = racnn_input([clip_in_silence(speech, 50, 70)], RacnnInputConfig(size=32))
    assert (untrimmed - padded).abs().max() > 0.5


def test_bin_mean_removes_each_bins_long_term_level() -> None:
    (clip,) = random_logmels([80])
    tilt = torch.linspace(-30.0, 30.0, 128)[None, :, None]  # a per-bin offset: a spectral tilt
    cfg = RacnnInputConfig(size=16, bin_mean=True)
    torch.testing.assert_close(racnn_input([clip + tilt], cfg), racnn_input([clip], cfg),
                               atol=1e-4, rtol=1e-4)
    plain = RacnnInputConfig(size=16)
    assert (racnn_input([clip + tilt], plain) - racnn_input([clip], plain)).abs().max() > 0.5
    short, long = random_logmels([40, 300])
    together = racnn_input([short, long], cfg)  # padding never counts in a bin's mean
    torch.testing.assert_close(together[0], racnn_input([short], cfg)[0], atol=1e-4, rtol=1e-4)


def test_trim_and_bin_mean_are_part_of_the_model_config() -> None:
    model_cfg = ModelConfig(racnn=RACNNConfig(trim_db=25.0))
    assert racnn_input_config(model_cfg, 0.5).trim_db == 25.0
    assert racnn_input_config(ModelConfig(), 0.5).trim_db is None  # the paper's: the whole clip
    assert racnn_input_config(ModelConfig(racnn=RACNNConfig(bin_mean=True)), 0.5).bin_mean
    with pytest.raises(ConfigError, match="trim_db"):
        RACNNConfig(trim_db=0.0)
    with pytest.raises(ConfigError, match="trim_db"):
        racnn_input(random_logmels([10]), RacnnInputConfig(trim_db=-5.0))


@pytest.mark.gpu
def test_racnn_input_on_gpu_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    clips = random_logmels([3, 90, 801])
    on_gpu = racnn_input([clip.cuda().half() for clip in clips])
    assert on_gpu.device.type == "cuda"
    on_cpu = racnn_input([clip.half() for clip in clips])
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-3, rtol=0.0)
