"""eNTERFACE'05 (Martin et al. 2006) -> manifest clips.

The archive's layout is ``subject N/<emotion>/sentence M/<file>.avi``, with
known irregularities this scanner tolerates:

- some emotions of subject 6 have no ``sentence M`` folders: the .avi files
  lie directly in the emotion folder and the sentence number is read from
  the file name's last number (``s6_an_1.avi`` -> 1);
- folder names vary in spaces and case (``subject 11``, ``Subject11``,
  ``Sentence 2``) and in spelling (``happyness``);
- file names are not trustworthy (subject 11's files are named ``s12_*``,
  subject 3 has ``s_3_*``, one file is ``s16_su_3avi.avi``), so subject,
  emotion and sentence come from the folders, never from the file name;
- stray files (``Thumbs.db``) are reported as problems.

The archive may sit inside wrapper folders (``enterface database/``): the
first path part that looks like ``subject N`` starts a clip's path.
``speaker`` is ``subject_NN``; ``clip_id`` is ``sN_<code>_M`` (the corpus's
own naming, rebuilt from the folders). The audio is the .avi's own track.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from avser.data.manifest import (
    BAD_NAME,
    UNKNOWN_FILE,
    UNKNOWN_LABEL,
    Clip,
    ScanProblem,
    ScanResult,
    corpus_root,
    files_under,
    keep_first,
)

CORPUS = "enterface"
# What an empty scan says it looked for.
EXPECTED_FILES = ("subject N/<emotion>/sentence M/<file>.avi, "
                  "e.g. subject 1/anger/sentence 1/s1_an_1.avi, at any depth")
LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
# The two-letter code each emotion has in the corpus's file names.
EMOTION_CODES = {
    "anger": "an",
    "disgust": "di",
    "fear": "fe",
    "happiness": "ha",
    "sadness": "sa",
    "surprise": "su",
}
# Spellings of emotion folders seen in copies of the corpus, lower-cased
# with spaces removed.
EMOTION_FOLDERS = {
    **{name: name for name in LABELS},
    **{code: name for name, code in EMOTION_CODES.items()},
    "angry": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "happy": "happiness",
    "happyness": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "suprise": "surprise",
}
VIDEO_SUFFIX = ".avi"
SUBJECT_FOLDER = re.compile(r"^subject\s*(\d+)$", re.IGNORECASE)
SENTENCE_FOLDER = re.compile(r"^sentence\s*(\d+)$", re.IGNORECASE)
# The number after the last underscore of a file stem, tolerating junk
# after it ("s16_su_3avi" -> 3); "s6_fe" has none.
SENTENCE_IN_NAME = re.compile(r"_(\d+)\D*$")
# Parts of a clip's path after the subject folder: emotion[/sentence]/file.
WITH_SENTENCE_FOLDER = 3
WITHOUT_SENTENCE_FOLDER = 2


@dataclass(frozen=True)
class EnterfacePlace:
    """Where a clip sits in the archive: what its folders say it is."""

    subject: int
    emotion: str
    sentence: int
    flat: bool  # no sentence folder (subject 6)

    @property
    def clip_id(self) -> str:
        return f"s{self.subject}_{EMOTION_CODES[self.emotion]}_{self.sentence}"

    @property
    def speaker(self) -> str:
        return f"subject_{self.subject:02d}"


def scan_enterface(root: str | Path) -> ScanResult:
    """Every eNTERFACE'05 .avi below ``root`` as a clip; any other file, or an
    .avi outside the ``subject/emotion[/sentence]`` layout, as a problem."""
    folder = corpus_root(root, CORPUS)
    clips, problems = [], []
    for path in files_under(folder):
        place = _place(path, folder)
        if isinstance(place, ScanProblem):
            problems.append(place)
        else:
            clips.append(_clip(path, place))
    clips, duplicates = keep_first(clips)
    return ScanResult(clips=clips, problems=problems + duplicates, labels=list(LABELS))


def emotion_of_folder(name: str) -> str | None:
    """The label a folder name stands for (``"Happyness "`` -> happiness)."""
    return EMOTION_FOLDERS.get(re.sub(r"\s+", "", name).lower())


def _place(path: Path, root: Path) -> EnterfacePlace | ScanProblem:
    """Read subject, emotion and sentence of ``path`` from its folders."""
    if path.suffix.lower() != VIDEO_SUFFIX:
        return ScanProblem(str(path), "not an eNTERFACE'05 video (.avi); remove it", UNKNOWN_FILE)
    parts = path.relative_to(root).parts
    start = next((i for i, part in enumerate(parts) if SUBJECT_FOLDER.match(part.strip())), None)
    if start is None:
        return ScanProblem(str(path), "not inside a 'subject N' folder", UNKNOWN_FILE)
    subject = int(SUBJECT_FOLDER.match(parts[start].strip()).group(1))
    below = parts[start + 1 :]
    if len(below) not in (WITH_SENTENCE_FOLDER, WITHOUT_SENTENCE_FOLDER):
        return ScanProblem(
            str(path),
            "expected subject N/<emotion>/sentence M/<file>.avi "
            "(or subject N/<emotion>/<file>.avi); move the file",
            BAD_NAME,
        )
    emotion = emotion_of_folder(below[0])
    if emotion is None:
        return ScanProblem(
            str(path),
            f"emotion folder {below[0]!r} is not one of {LABELS}; rename the folder",
            UNKNOWN_LABEL,
        )
    flat = len(below) == WITHOUT_SENTENCE_FOLDER
    sentence = _sentence(below[1].strip() if not flat else path.stem, flat)
    if sentence is None:
        where = f"file name {path.name!r}" if flat else f"folder {below[1]!r}"
        return ScanProblem(str(path), f"no sentence number in {where}", BAD_NAME)
    return EnterfacePlace(subject=subject, emotion=emotion, sentence=sentence, flat=flat)


def _sentence(text: str, from_file_name: bool) -> int | None:
    match = (SENTENCE_IN_NAME.search if from_file_name else SENTENCE_FOLDER.match)(text)
    return int(match.group(1)) if match else None


def _clip(path: Path, place: EnterfacePlace) -> Clip:
    media = str(path)
    return Clip(
        clip_id=place.clip_id,
        corpus=CORPUS,
        speaker=place.speaker,
        label=LABELS.index(place.emotion),
        label_name=place.emotion,
        audio_path=media,
        video_path=media,
        extra={
            "subject": place.subject,
            "sentence": place.sentence,
            "file_name": path.name,
            "sentence_folder": not place.flat,
        },
    )
