"""Frame decoding and media probing (avser.features.video) on real and synthetic files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from avser.errors import (
    ConfigError,
    MissingFileError,
    NoAudioTrackError,
    TooFewFramesError,
    UnreadableMediaError,
)
from avser.features.config import VideoConfig
from avser.features.video import decode_audio_track, decode_video, probe_media

SYNTH_FPS = 25
SYNTH_SIZE = (64, 48)  # width, height
GREY_START, GREY_STEP, NOISE = 20, 4, 8


def write_video(
    path: Path, n_frames: int, *, faststart: bool = False, keyframe_every: int = 5
) -> Path:
    """A silent H.264 mp4 (no audio stream): frame i is grey level 20 + 4*i plus noise.

    The noise keeps frames from compressing to nothing, so a file cut in half
    still holds whole frames.
    """
    width, height = SYNTH_SIZE
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=SYNTH_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(keyframe_every)}
        for i in range(n_frames):
            noise = rng.integers(-NOISE, NOISE + 1, size=(height, width, 3))
            pixels = (GREY_START + GREY_STEP * i + noise).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def faces(shared_data: Path) -> Path:
    return shared_data / "face-videos"


def test_single_face_decodes_every_frame_in_order(faces: Path) -> None:
    video = decode_video(faces / "single_face.mp4")
    assert len(video) == 72
    assert video.frames.shape == (72, 360, 640, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(30.0)
    assert video.source_size == (640, 360) and video.scale == 1.0
    assert video.timestamps.dtype == np.float64
    assert np.all(np.diff(video.timestamps) > 0)
    np.testing.assert_allclose(video.timestamps, np.arange(72) / 30.0, atol=1e-3)
    np.testing.assert_array_equal(video.frame_indices, np.arange(72))
    assert video.frames.std() > 10  # real picture content, not a blank buffer


def test_stride_and_max_frames(faces: Path) -> None:
    cfg = VideoConfig(frame_stride=5, max_frames=10)
    video = decode_video(faces / "single_face.mp4", cfg)
    np.testing.assert_array_equal(video.frame_indices, np.arange(0, 50, 5))
    np.testing.assert_allclose(np.diff(video.timestamps), 5 / 30.0, atol=1e-3)
    full = decode_video(faces / "single_face.mp4", VideoConfig(max_frames=11))
    np.testing.assert_array_equal(video.frames[2], full.frames[10])


def test_max_side_downscales_keeping_aspect(faces: Path) -> None:
    video = decode_video(faces / "no_face.mp4", VideoConfig(max_side=320, max_frames=4))
    assert video.source_size == (960, 540)
    assert video.frames.shape == (4, 180, 320, 3)
    assert video.scale == pytest.approx(1 / 3)
    unscaled = decode_video(
        faces / "no_face.mp4", VideoConfig(max_side=None, max_frames=1, min_frames=1)
    )
    assert unscaled.frames.shape == (1, 540, 960, 3) and unscaled.scale == 1.0
    # Downscaling averages pixels: the mean colour survives.
    assert abs(float(video.frames[0].mean()) - float(unscaled.frames[0].mean())) < 2.0


def test_no_face_video_decodes_fine(faces: Path) -> None:
    video = decode_video(faces / "no_face.mp4")
    assert len(video) >= 90
    assert video.frames.shape[1:] == (360, 640, 3)  # default max_side 640
    assert np.all(np.diff(video.timestamps) > 0)


def test_hevc_mov_decodes(faces: Path) -> None:
    video = decode_video(faces / "face_noface.mov", VideoConfig(max_frames=5))
    assert len(video) == 5 and video.source_size == (960, 540)


def test_synthetic_frames_keep_their_content(tmp_path: Path) -> None:
    video = decode_video(write_video(tmp_path / "grey.mp4", 10))
    assert len(video) == 10 and video.fps == pytest.approx(SYNTH_FPS)
    np.testing.assert_allclose(video.timestamps, np.arange(10) / SYNTH_FPS, atol=1e-6)
    grey = video.frames.reshape(10, -1).mean(axis=1)
    np.testing.assert_allclose(grey, GREY_START + GREY_STEP * np.arange(10), atol=3)


def test_probe_media(faces: Path, tmp_path: Path) -> None:
    info = probe_media(faces / "single_face.mp4")
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.n_frames) == (640, 360, 72)
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(2.42, abs=0.01)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)

    silent_video = probe_media(write_video(tmp_path / "mute.mp4", 10))
    assert silent_video.has_video and not silent_video.has_audio
    assert silent_video.audio_sample_rate is None

    wav = tmp_path / "tone.wav"
    sf.write(wav, np.zeros((8000, 2), dtype=np.float32), 8000)
    audio_only = probe_media(wav)
    assert audio_only.has_audio and not audio_only.has_video
    assert (audio_only.audio_sample_rate, audio_only.audio_channels) == (8000, 2)
    assert audio_only.duration == pytest.approx(1.0, abs=0.01)


def test_audio_track_of_video(faces: Path, tmp_path: Path) -> None:
    track = decode_audio_track(faces / "single_face.mp4")
    assert track.sample_rate == 44100 and track.samples.shape[0] == 2
    assert track.samples.dtype == np.float32
    assert track.duration == pytest.approx(2.42, abs=0.01)
    mute = write_video(tmp_path / "mute.mp4", 5)
    with pytest.raises(NoAudioTrackError, match="no audio track") as caught:
        decode_audio_track(mute)
    assert str(mute) in str(caught.value)


# ---- bad inputs ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(MissingFileError, match="does not exist") as caught:
        decode_video(missing)
    assert str(missing) in str(caught.value)


def test_text_file_renamed_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(UnreadableMediaError) as caught:
        decode_video(fake)
    assert str(fake) in str(caught.value)
    with pytest.raises(UnreadableMediaError):
        probe_media(fake)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableMediaError, match="empty"):
        decode_video(empty)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.full(1600, 0.1, dtype=np.float32), 16000)
    with pytest.raises(UnreadableMediaError, match="no video stream") as caught:
        decode_video(wav)
    assert str(wav) in str(caught.value)


def test_truncated_file_keeps_what_decodes(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.mp4", 50, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    video = decode_video(cut)
    assert 3 <= len(video) < 50
    np.testing.assert_array_equal(video.frame_indices, np.arange(len(video)))


def test_truncated_file_with_nothing_decodable(faces: Path, tmp_path: Path) -> None:
    # single_face.mp4 keeps its index at the end: its first 4 KB hold no frame.
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((faces / "single_face.mp4").read_bytes()[:4096])
    with pytest.raises(UnreadableMediaError) as caught:
        decode_video(cut)
    assert str(cut) in str(caught.value)


def test_too_few_frames(tmp_path: Path, faces: Path) -> None:
    short = write_video(tmp_path / "short.mp4", 2)
    with pytest.raises(TooFewFramesError, match="at least 3") as caught:
        decode_video(short)
    assert str(short) in str(caught.value)
    # A stride can leave too few: 72 frames, every 40th -> 2.
    with pytest.raises(TooFewFramesError):
        decode_video(faces / "single_face.mp4", VideoConfig(frame_stride=40))
    assert len(decode_video(short, VideoConfig(min_frames=1))) == 2


def test_impossible_config_is_a_config_error(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 3)
    with pytest.raises(ConfigError, match="frame_stride"):
        decode_video(video, VideoConfig(frame_stride=0))
    with pytest.raises(ConfigError, match="max_frames"):
        decode_video(video, VideoConfig(max_frames=2, min_frames=3))
