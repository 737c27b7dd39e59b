"""Typed errors for bad input.

Every error names the clip or file, says what went wrong and what to do next,
so a preprocessing job can record it as a row and carry on. ``reason`` is a
short stable code used to group failures in summaries.
"""

from __future__ import annotations

from pathlib import Path


# The exit code of a command or job stopped by an AvserError (argparse uses 2 too).
EXIT_BAD_INPUT = 2


class AvserError(Exception):
    """Base class of every error avser raises on purpose."""


def error_line(exc: AvserError) -> str:
    """How a command or job reports ``exc``: one line, no traceback (it is
    the user's input that is wrong, not the code)."""
    return "error: " + " ".join(str(exc).split())


class ConfigError(AvserError):
    """A configuration file or value is wrong."""


class ClipError(AvserError):
    """One clip (or one of its files) cannot be turned into features.

    ``path`` is the offending file, ``detail`` what was found, ``hint`` what
    the user can do about it.
    """

    reason = "clip_error"

    def __init__(self, path: str | Path | None, detail: str, hint: str = "") -> None:
        self.path = str(path) if path is not None else None
        self.detail = detail
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        tail = f" ({hint})" if hint else ""
        super().__init__(f"{where}{detail}{tail}")


class MissingFileError(ClipError):
    reason = "missing_file"


class UnreadableMediaError(ClipError):
    """Corrupt, truncated or unsupported file."""

    reason = "unreadable"


class EmptyAudioError(ClipError):
    """Zero-length or silent audio."""

    reason = "empty_audio"


class TooShortAudioError(ClipError):
    """Audio shorter than ``audio.min_seconds``: too few frames to be an utterance."""

    reason = "too_short"


class NoAudioTrackError(ClipError):
    reason = "no_audio_track"


class NoFaceError(ClipError):
    reason = "no_face"


class TooFewFramesError(ClipError):
    reason = "too_few_frames"


class UnknownLabelError(ClipError):
    reason = "unknown_label"


class BackendUnavailableError(AvserError):
    """A landmark backend (or other external tool) is not installed."""

    reason = "backend_unavailable"
