"""Decode a clip's frames and its audio track with PyAV.

Every failure on a bad file becomes a typed :mod:`avser.errors` error that
names the file; PyAV's own exceptions never escape. A truncated or partly
corrupt file yields whatever PyAV can decode; only a file from which nothing
decodes is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avser.errors import (
    ConfigError,
    MissingFileError,
    NoAudioTrackError,
    TooFewFramesError,
    UnreadableMediaError,
)
from avser.features.config import VideoConfig

# Downscaling averages source pixels (no aliasing on faces shrunk 2-3x).
_DOWNSCALE_INTERPOLATION = "AREA"
# One scaling thread per frame: spawning more costs more than it saves on frames
# this small, and preprocessing already runs one decoder per CPU.
_SCALE_THREADS = 1
# Frames come out as 8-bit RGB, the layout face and landmark models expect.
_RGB_FORMAT = "rgb24"
# The audio track is converted to planar float32 in [-1, 1] before leaving PyAV.
_PLANAR_FLOAT_FORMAT = "fltp"
# PyAV reports container durations in microseconds.
_CONTAINER_TIME_BASE = 1e-6
# Errors a damaged or unsupported file can raise inside PyAV/FFmpeg.
_MEDIA_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, RuntimeError)

_HINT_REENCODE = "check it plays (ffprobe FILE); copy it again, re-encode it or drop the clip"


@dataclass
class VideoFrames:
    """Decoded frames of one clip.

    ``frames`` is ``(N, H, W, 3)`` uint8 RGB after stride and downscaling;
    ``timestamps`` ``(N,)`` float64 presentation times in seconds;
    ``frame_indices`` ``(N,)`` each frame's index among all decoded source
    frames; ``fps`` the source stream's frame rate (not divided by the
    stride); ``source_size`` the source ``(width, height)``; ``scale`` the
    factor applied to the source size (1.0 when not downscaled), so source
    pixel coordinates are output coordinates divided by ``scale``.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    source_size: tuple[int, int]
    scale: float = 1.0
    frame_indices: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class MediaInfo:
    """What a media file holds, read from its headers without decoding."""

    path: str
    has_audio: bool
    has_video: bool
    duration: float | None  # seconds
    fps: float | None
    width: int | None
    height: int | None
    n_frames: int | None  # as the container states it; None when unknown
    audio_sample_rate: int | None
    audio_channels: int | None


@dataclass
class AudioTrack:
    """A decoded audio track: ``samples`` ``(channels, n)`` float32 at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[1] / self.sample_rate


def require_file(path: Path) -> None:
    """Raise :class:`MissingFileError` unless ``path`` is an existing file."""
    if not path.is_file():
        what = "is a directory, not a media file" if path.is_dir() else "does not exist"
        raise MissingFileError(path, f"file {what}", "check the path in the manifest")


@contextmanager
def open_media(path: str | Path) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for reading with PyAV, turning failures into typed errors."""
    path = Path(path)
    require_file(path)
    if path.stat().st_size == 0:
        raise UnreadableMediaError(path, "file is empty (0 bytes)", _HINT_REENCODE)
    try:
        container = av.open(str(path), mode="r")
    except _MEDIA_ERRORS as exc:
        raise UnreadableMediaError(
            path, f"not a readable audio/video file ({exc})", _HINT_REENCODE
        ) from exc
    try:
        yield container
    finally:
        container.close()


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _container_duration(container: av.container.InputContainer) -> float | None:
    if container.duration is not None:
        return container.duration * _CONTAINER_TIME_BASE
    for stream in container.streams:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
    return None


def probe_media(path: str | Path) -> MediaInfo:
    """Read the streams of ``path`` (any container PyAV opens, audio-only too)."""
    with open_media(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        return MediaInfo(
            path=str(path),
            has_audio=audio is not None,
            has_video=video is not None,
            duration=_container_duration(container),
            fps=_stream_fps(video) if video is not None else None,
            width=video.width if video is not None else None,
            height=video.height if video is not None else None,
            n_frames=(video.frames or None) if video is not None else None,
            audio_sample_rate=audio.rate if audio is not None else None,
            audio_channels=audio.channels if audio is not None else None,
        )


def _output_size(width: int, height: int, max_side: int | None) -> tuple[int, int, float]:
    """Size after shrinking the longer side to ``max_side`` (never enlarging)."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height, 1.0
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    """Every frame PyAV can decode; a damaged packet is skipped, a damaged tail ends it."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except _MEDIA_ERRORS:
                continue  # one corrupt packet: later keyframes may still decode
    except _MEDIA_ERRORS:
        return  # truncated or unreadable container: keep what came out


def _frame_time(frame: av.VideoFrame, index: int, fps: float | None) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / fps if fps else float(index)


def decode_video(path: str | Path, cfg: VideoConfig | None = None) -> VideoFrames:
    """Decode the first video stream of ``path`` into RGB frames.

    Keeps every ``cfg.frame_stride``-th decoded frame, at most
    ``cfg.max_frames`` of them, downscaled so the longer side is at most
    ``cfg.max_side``. Raises :class:`UnreadableMediaError` when the file has
    no video stream or nothing decodes, :class:`TooFewFramesError` when fewer
    than ``cfg.min_frames`` frames are kept.
    """
    cfg = cfg or VideoConfig()
    path = Path(path)
    _check_video_config(cfg)
    with open_media(path) as container:
        if not container.streams.video:
            raise UnreadableMediaError(
                path,
                "has no video stream",
                "leave the clip's video_path empty to use it audio-only",
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding; results are identical
        fps = _stream_fps(stream)
        source_size = (stream.width, stream.height)
        frames, times, indices, scale = _keep_frames(container, stream, fps, cfg)
    if not frames:
        raise UnreadableMediaError(path, "no video frame could be decoded", _HINT_REENCODE)
    if len(frames) < cfg.min_frames:
        raise TooFewFramesError(
            path,
            f"only {len(frames)} frame(s) kept (stride {cfg.frame_stride}), "
            f"at least {cfg.min_frames} needed",
            "use a longer clip or lower video.frame_stride / video.min_frames",
        )
    return VideoFrames(
        frames=np.stack(frames),
        timestamps=np.asarray(times, dtype=np.float64),
        fps=fps or _fps_from_times(times, cfg.frame_stride),
        source_size=source_size,
        scale=scale,
        frame_indices=np.asarray(indices, dtype=np.int64),
    )


def _check_video_config(cfg: VideoConfig) -> None:
    if cfg.frame_stride < 1:
        raise ConfigError(f"video.frame_stride must be >= 1, got {cfg.frame_stride}")
    if cfg.max_frames is not None and cfg.max_frames < cfg.min_frames:
        raise ConfigError(
            f"video.max_frames ({cfg.max_frames}) is below video.min_frames "
            f"({cfg.min_frames}): every clip would fail"
        )


def _keep_frames(container, stream, fps, cfg: VideoConfig):
    frames: list[np.ndarray] = []
    times: list[float] = []
    indices: list[int] = []
    scale = 1.0
    # closing(): stopping at max_frames ends the demuxer before the container closes.
    with closing(_decoded_frames(container, stream)) as decoded:
        for index, frame in enumerate(decoded):
            if index % cfg.frame_stride:
                continue  # still decoded (later frames depend on it), but not converted
            width, height, scale = _output_size(frame.width, frame.height, cfg.max_side)
            rgb = frame.reformat(
                width=width, height=height, format=_RGB_FORMAT,
                interpolation=_DOWNSCALE_INTERPOLATION, threads=_SCALE_THREADS,
            )
            frames.append(rgb.to_ndarray())
            times.append(_frame_time(frame, index, fps))
            indices.append(index)
            if cfg.max_frames is not None and len(frames) >= cfg.max_frames:
                break
    return frames, times, indices, scale


def _fps_from_times(times: list[float], stride: int) -> float:
    """Source frame rate estimated from kept timestamps, when the stream states none."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return stride * (len(times) - 1) / (times[-1] - times[0])


def decode_audio_track(path: str | Path) -> AudioTrack:
    """Decode the first audio stream of ``path`` (a video or an audio file) at its own rate.

    Raises :class:`NoAudioTrackError` when there is no audio stream and
    :class:`UnreadableMediaError` when no sample decodes.
    """
    path = Path(path)
    with open_media(path) as container:
        if not container.streams.audio:
            raise NoAudioTrackError(
                path, "has no audio track", "give the clip a separate audio_path or drop it"
            )
        stream = container.streams.audio[0]
        chunks = list(_decoded_audio(container, stream))
        sample_rate = stream.rate
    if not chunks:
        raise UnreadableMediaError(path, "no audio sample could be decoded", _HINT_REENCODE)
    return AudioTrack(samples=np.concatenate(chunks, axis=1), sample_rate=sample_rate)


def _decoded_audio(container, stream) -> Iterator[np.ndarray]:
    """``(channels, n)`` float32 chunks; damaged packets skipped, a damaged tail ends it."""
    # Converts every sample format (s16, fltp, ...) to planar float, same rate and layout.
    resampler = av.AudioResampler(format=_PLANAR_FLOAT_FORMAT)
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except _MEDIA_ERRORS:
                continue
            for frame in frames:
                for converted in resampler.resample(frame):
                    yield converted.to_ndarray()
        for converted in resampler.resample(None):  # flush what the converter holds
            yield converted.to_ndarray()
    except _MEDIA_ERRORS:
        return
