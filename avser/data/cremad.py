"""CREMA-D (Cao et al. 2014) -> manifest clips.

File names are ``<actor>_<sentence>_<emotion>_<intensity>``, e.g.
``1001_DFA_ANG_XX``: actor 1001..1091, one of twelve sentences, emotion
ANG DIS FEA HAP NEU SAD, intensity LO MD HI or XX (unspecified). Audio
lies in ``AudioWAV/*.wav``; the videos, where a copy has them, in
``VideoFlash/*.flv`` or ``VideoMP4/*.mp4`` under the same stem. A clip
whose wav is absent but whose video is present takes its audio from the
video's own track. Without an ``AudioWAV`` folder the root itself is read
as the audio folder (a flat copy of the wavs).

Only the media folders are read: the corpus's rating tables and
demographics next to them are not clips. ``speaker`` is the actor id as
the corpus writes it (``1001``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from avser.data.manifest import BAD_NAME, UNKNOWN_FILE, Clip, ScanProblem, ScanResult, corpus_root
from avser.errors import ClipError, UnknownLabelError

CORPUS = "cremad"
# What an empty scan says it looked for.
EXPECTED_FILES = ("AudioWAV/<actor>_<sentence>_<emotion>_<intensity>.wav, e.g. "
                  "AudioWAV/1001_DFA_ANG_XX.wav (or such wavs directly in the root), "
                  "videos in VideoMP4/ or VideoFlash/")
LABELS = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
EMOTION_CODES = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
NAME_PATTERN = re.compile(
    r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<intensity>[A-Z]{2})$"
)
AUDIO_DIR = "AudioWAV"
AUDIO_SUFFIX = ".wav"
# Video folders in order of preference when a copy has both.
VIDEO_FOLDERS = (("VideoMP4", ".mp4"), ("VideoFlash", ".flv"))


@dataclass(frozen=True)
class CremadName:
    actor: str
    sentence: str
    emotion: str
    intensity: str


def parse_name(path: str | Path) -> CremadName:
    """Decode a CREMA-D file name; ClipError (UnknownLabelError for the
    emotion) naming the bad field otherwise."""
    path = Path(path)
    match = NAME_PATTERN.match(path.stem)
    if not match:
        raise ClipError(
            path,
            "name is not <actor>_<sentence>_<emotion>_<intensity> (e.g. 1001_DFA_ANG_XX)",
            "rename it as in the corpus or remove it",
        )
    if match["emotion"] not in EMOTION_CODES:
        raise UnknownLabelError(
            path,
            f"emotion code {match['emotion']} is not one of {sorted(EMOTION_CODES)}",
            "check the file name",
        )
    for field, valid in (("sentence", SENTENCES), ("intensity", INTENSITIES)):
        if match[field] not in valid:
            raise ClipError(
                path, f"{field} code {match[field]} is not one of {sorted(valid)}", "check the file name"
            )
    return CremadName(match["actor"], match["sentence"], match["emotion"], match["intensity"])


def scan_cremad(root: str | Path, include_video: bool = True) -> ScanResult:
    """Every CREMA-D clip in the media folders of ``root``; with
    ``include_video=False`` the videos are not looked at (audio only)."""
    folder = corpus_root(root, CORPUS)
    audio_dir = folder / AUDIO_DIR
    folders = [(audio_dir if audio_dir.is_dir() else folder, AUDIO_SUFFIX)]
    if include_video:
        folders += [(folder / name, suffix) for name, suffix in VIDEO_FOLDERS]
    media: dict[str, dict[str, Path]] = {}
    problems = []
    for media_dir, suffix in folders:
        found, stray = _media_files(media_dir, suffix)
        problems += stray
        for stem, path in found.items():
            media.setdefault(stem, {}).setdefault(suffix, path)
    clips = []
    for stem in sorted(media):
        made = _clip(stem, media[stem])
        (problems if isinstance(made, ScanProblem) else clips).append(made)
    return ScanResult(clips=clips, problems=problems, labels=list(LABELS))


def _media_files(folder: Path, suffix: str) -> tuple[dict[str, Path], list[ScanProblem]]:
    """Files of ``folder`` (not below it) with ``suffix`` by stem; others as problems."""
    if not folder.is_dir():
        return {}, []
    found, stray = {}, []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.suffix.lower() == suffix:
            found[path.stem] = path
        else:
            stray.append(
                ScanProblem(str(path), f"not a CREMA-D {suffix} file; remove it", UNKNOWN_FILE)
            )
    return found, stray


def _clip(stem: str, files: dict[str, Path]) -> Clip | ScanProblem:
    audio = files.get(AUDIO_SUFFIX)
    video = next((files[s] for _, s in VIDEO_FOLDERS if s in files), None)
    try:
        name = parse_name(audio or video)
    except UnknownLabelError as exc:
        return ScanProblem.from_error(exc)
    except ClipError as exc:
        return ScanProblem.from_error(exc, BAD_NAME)
    label = EMOTION_CODES[name.emotion]
    return Clip(
        clip_id=stem,
        corpus=CORPUS,
        speaker=name.actor,
        label=LABELS.index(label),
        label_name=label,
        # No wav: the video's own sound track is the audio.
        audio_path=str(audio or video),
        video_path=str(video) if video else None,
        extra={
            "actor": name.actor,
            "sentence": name.sentence,
            "intensity": INTENSITIES[name.intensity],
        },
    )
