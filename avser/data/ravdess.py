"""RAVDESS (Livingstone & Russo 2018) -> manifest clips.

A file name is seven two-digit codes,
modality-vocal-emotion-intensity-statement-repetition-actor, e.g.
``03-01-06-01-02-01-12.wav``: modality 01 audio-video (.mp4), 02 video-only
(.mp4, no sound), 03 audio-only (.wav, or .flac in a resampled copy); vocal
channel 01 speech, 02 song; emotion 01 neutral .. 08 surprised; odd actors
are male.

``speaker`` is ``Actor_NN``, the corpus's own folder name, so a speaker in
a split can be found on disk. Clip ids are the file stems; the label comes
from the emotion code, never from the folder.

The paper uses the 1440 speech files only, so song is left out unless
``include_song=True``. Scanning a folder that holds the same performances
as both audio-only and audio-video files yields both (their ids differ in
the modality code); choose with ``modalities=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from avser.data.manifest import (
    BAD_NAME,
    EXCLUDED,
    INCONSISTENT,
    UNKNOWN_FILE,
    Clip,
    ScanProblem,
    ScanResult,
    corpus_root,
    files_under,
    keep_first,
)
from avser.errors import AvserError, ClipError, UnknownLabelError

CORPUS = "ravdess"
# What an empty scan says it looked for.
EXPECTED_FILES = ("files named by seven two-digit codes, e.g. "
                  "Actor_01/03-01-06-01-02-01-01.wav (.wav, .flac or .mp4), at any depth")
LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
EMOTION_CODES = {f"{i + 1:02d}": name for i, name in enumerate(LABELS)}
MODALITIES = {"01": "audio_video", "02": "video_only", "03": "audio_only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
REPETITIONS = {"01": 1, "02": 2}
N_ACTORS = 24
ACTORS = {f"{i:02d}" for i in range(1, N_ACTORS + 1)}

VIDEO_SUFFIXES = {".mp4"}
AUDIO_SUFFIXES = {".wav", ".flac"}
NAME_PATTERN = re.compile(r"^\d{2}(-\d{2}){6}$")
ACTOR_FOLDER = re.compile(r"^Actor_(\d{2})$")
# Which suffixes each modality's files may have.
MODALITY_SUFFIXES = {
    "audio_video": VIDEO_SUFFIXES,
    "video_only": VIDEO_SUFFIXES,
    "audio_only": AUDIO_SUFFIXES,
}
NEUTRAL = "01"
STRONG = "02"


@dataclass(frozen=True)
class RavdessName:
    """The seven codes of one RAVDESS file name, decoded."""

    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: int
    repetition: int
    actor: int

    @property
    def speaker(self) -> str:
        return f"Actor_{self.actor:02d}"

    @property
    def gender(self) -> str:
        # RAVDESS: odd-numbered actors are male, even female.
        return "male" if self.actor % 2 else "female"


def parse_name(path: str | Path) -> RavdessName:
    """Decode a RAVDESS file name; ClipError (UnknownLabelError for the
    emotion) naming the bad field otherwise."""
    path = Path(path)
    if not NAME_PATTERN.match(path.stem):
        raise ClipError(
            path,
            "name is not seven two-digit codes (modality-vocal-emotion-"
            "intensity-statement-repetition-actor)",
            "rename it as in the corpus or move it out of the corpus folder",
        )
    modality, vocal, emotion, intensity, statement, repetition, actor = path.stem.split("-")
    if emotion not in EMOTION_CODES:
        raise UnknownLabelError(
            path, f"emotion code {emotion} is not one of 01..08", "check the file name"
        )
    for field, code, valid in (
        ("modality", modality, MODALITIES),
        ("vocal channel", vocal, VOCAL_CHANNELS),
        ("intensity", intensity, INTENSITIES),
        ("statement", statement, STATEMENTS),
        ("repetition", repetition, REPETITIONS),
        ("actor", actor, ACTORS),
    ):
        if code not in valid:
            raise ClipError(
                path, f"{field} code {code} is not one of {sorted(valid)}", "check the file name"
            )
    if emotion == NEUTRAL and intensity == STRONG:
        raise ClipError(path, "neutral has no strong intensity in RAVDESS", "check the file name")
    return RavdessName(
        modality=MODALITIES[modality],
        vocal_channel=VOCAL_CHANNELS[vocal],
        emotion=EMOTION_CODES[emotion],
        intensity=INTENSITIES[intensity],
        statement=int(statement),
        repetition=int(repetition),
        actor=int(actor),
    )


def scan_ravdess(
    root: str | Path,
    modalities: Iterable[str] | None = None,
    include_song: bool = False,
) -> ScanResult:
    """Every RAVDESS file below ``root`` as a clip.

    ``modalities``: any of ``audio_video``, ``video_only``, ``audio_only``
    (default: all found). ``include_song``: keep vocal channel 02 (song).
    Other files, bad codes and files left out by these options are
    returned as problems.
    """
    folder = corpus_root(root, CORPUS)
    wanted = _wanted_modalities(modalities)
    clips, problems = [], []
    for path in files_under(folder):
        name = _read(path)
        if isinstance(name, ScanProblem):
            problems.append(name)
            continue
        left_out = _left_out_by(name, wanted, include_song)
        if left_out:
            problems.append(ScanProblem(str(path), left_out, EXCLUDED))
            continue
        clips.append(_clip(path, name))
    clips, duplicates = keep_first(clips)
    return ScanResult(clips=clips, problems=problems + duplicates, labels=list(LABELS))


def _wanted_modalities(modalities: Iterable[str] | None) -> set[str]:
    if modalities is None:
        return set(MODALITIES.values())
    wanted = {modalities} if isinstance(modalities, str) else set(modalities)
    unknown = sorted(wanted - set(MODALITIES.values()))
    if unknown:
        raise AvserError(
            f"unknown RAVDESS modalities {unknown}; choose from {sorted(MODALITIES.values())}"
        )
    return wanted


def _read(path: Path) -> RavdessName | ScanProblem:
    """Decode ``path``, checking that its suffix and folder agree with its codes."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES | AUDIO_SUFFIXES:
        reason = "not a RAVDESS media file (.wav, .flac or .mp4)"
        return ScanProblem(str(path), reason, UNKNOWN_FILE)
    try:
        name = parse_name(path)
    except UnknownLabelError as exc:
        return ScanProblem.from_error(exc)
    except ClipError as exc:
        return ScanProblem.from_error(exc, BAD_NAME)
    if suffix not in MODALITY_SUFFIXES[name.modality]:
        return ScanProblem(
            str(path),
            f"a {name.modality} file should be {sorted(MODALITY_SUFFIXES[name.modality])}; "
            "check the modality code",
            INCONSISTENT,
        )
    folder_actor = ACTOR_FOLDER.match(path.parent.name)
    if folder_actor and int(folder_actor.group(1)) != name.actor:
        return ScanProblem(
            str(path),
            f"actor code {name.actor:02d} disagrees with folder {path.parent.name}; "
            "move the file to its actor's folder",
            INCONSISTENT,
        )
    return name


def _left_out_by(name: RavdessName, wanted: set[str], include_song: bool) -> str:
    """Why the options leave this clip out ('' when they keep it)."""
    if name.vocal_channel == "song" and not include_song:
        return "song (vocal channel 02) left out; pass include_song=True to keep it"
    if name.modality not in wanted:
        return f"{name.modality} left out; modalities={sorted(wanted)}"
    return ""


def _clip(path: Path, name: RavdessName) -> Clip:
    media = str(path)
    return Clip(
        clip_id=path.stem,
        corpus=CORPUS,
        speaker=name.speaker,
        label=LABELS.index(name.emotion),
        label_name=name.emotion,
        audio_path=None if name.modality == "video_only" else media,
        video_path=None if name.modality == "audio_only" else media,
        extra={
            "modality": name.modality,
            "vocal_channel": name.vocal_channel,
            "intensity": name.intensity,
            "statement": name.statement,
            "repetition": name.repetition,
            "actor": name.actor,
            "gender": name.gender,
        },
    )
