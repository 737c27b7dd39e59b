"""IEMOCAP (Busso et al. 2008) -> manifest clips, the usual 4-class task.

Labels come from ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, one line
per utterance::

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]

and the audio is ``SessionN/sentences/wav/<dialog>/<utterance>.wav``. As
in most of the literature (and the paper, section III-B) only neutral,
happy, angry and sad are kept, with excitement merged into happy unless
``merge_excited=False``; every other utterance (frustration, surprise,
no agreement ``xxx``, ...) is reported as an ``out_of_scope`` problem.

``speaker`` is the session plus the gender of the utterance's speaker,
read from the last part of the utterance id (``Ses01F_impro01_M013`` ->
``Ses01M``): the dialog's letter names who wore the motion capture, not
who speaks. Clips are audio only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from avser.data.manifest import (
    BAD_NAME,
    MISSING_FILE,
    OUT_OF_SCOPE,
    UNKNOWN_FILE,
    Clip,
    ScanProblem,
    ScanResult,
    corpus_root,
    files_under,
    keep_first,
)
from avser.errors import AvserError

CORPUS = "iemocap"
# What an empty scan says it looked for.
EXPECTED_FILES = ("SessionN/dialog/EmoEvaluation/<dialog>.txt labelling "
                  "SessionN/sentences/wav/<dialog>/<utterance>.wav, e.g. "
                  "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav")
LABELS = ["neutral", "happy", "angry", "sad"]
# Evaluation codes of the 4-class task.
FOUR_CLASS = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
EXCITED = "exc"
# Names of the codes left out, for readable problems.
OTHER_CODES = {
    "exc": "excitement",
    "fru": "frustration",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    "oth": "other",
    "xxx": "no agreement",
}
SESSION_FOLDER = re.compile(r"^Session([1-5])$")
EVALUATION_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utterance>\S+)\s+"
    r"(?P<code>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
UTTERANCE_ID = re.compile(r"^(?P<session>Ses0[1-5])[MF]_.+_(?P<gender>[MF])[^_]*$")
EVALUATION_DIR = Path("dialog", "EmoEvaluation")
WAV_DIR = Path("sentences", "wav")
WAV_SUFFIX = ".wav"
VAD_NAMES = ("valence", "activation", "dominance")


@dataclass(frozen=True)
class Evaluation:
    """One utterance's line of an EmoEvaluation file."""

    utterance: str
    code: str
    start: float
    end: float
    vad: tuple[float, ...]
    source: Path

    @property
    def dialog(self) -> str:
        return self.utterance.rsplit("_", 1)[0]


def scan_iemocap(
    root: str | Path,
    merge_excited: bool = True,
    sessions: Iterable[int] | None = None,
) -> ScanResult:
    """The 4-class IEMOCAP utterances of ``sessions`` (default all found)."""
    folder = corpus_root(root, CORPUS)
    clips, problems = [], []
    for session_dir in _session_dirs(folder, sessions):
        evaluations, bad_lines = read_evaluations(session_dir / EVALUATION_DIR)
        problems += bad_lines
        labelled = set()
        for evaluation in evaluations:
            labelled.add(evaluation.utterance)
            made = _clip(session_dir, evaluation, merge_excited)
            (problems if isinstance(made, ScanProblem) else clips).append(made)
        problems += _unlabelled_files(session_dir / WAV_DIR, labelled)
    clips, duplicates = keep_first(clips)
    return ScanResult(clips=clips, problems=problems + duplicates, labels=list(LABELS))


def read_evaluations(folder: Path) -> tuple[list[Evaluation], list[ScanProblem]]:
    """The utterance lines of every ``*.txt`` in an EmoEvaluation folder,
    plus a problem per line that starts like one but cannot be read."""
    evaluations, problems = [], []
    for path in sorted(folder.glob("*.txt")):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.startswith("["):
                continue  # headers, per-annotator lines, blank lines
            evaluation = _parse_line(line, path)
            if evaluation is None:
                reason = f"line {number} is not a readable evaluation: {line!r}"
                problems.append(ScanProblem(str(path), reason, BAD_NAME))
            else:
                evaluations.append(evaluation)
    return evaluations, problems


def speaker_of(utterance: str) -> str | None:
    """``Ses01F_impro01_M013`` -> ``Ses01M``; None when the id does not parse."""
    match = UTTERANCE_ID.match(utterance)
    return f"{match['session']}{match['gender']}" if match else None


def _session_dirs(root: Path, sessions: Iterable[int] | None) -> list[Path]:
    found = {int(m.group(1)): p for p in root.iterdir() if (m := SESSION_FOLDER.match(p.name))}
    if sessions is None:
        return [found[n] for n in sorted(found)]
    wanted = sorted(set(sessions))
    missing = [n for n in wanted if n not in found]
    if missing:
        raise AvserError(
            f"IEMOCAP root {root} has no Session folder for sessions {missing}; "
            f"found sessions {sorted(found)}"
        )
    return [found[n] for n in wanted]


def _parse_line(line: str, source: Path) -> Evaluation | None:
    match = EVALUATION_LINE.match(line)
    if not match:
        return None
    try:
        vad = tuple(float(v) for v in match["vad"].split(","))
        start, end = float(match["start"]), float(match["end"])
    except ValueError:
        return None
    return Evaluation(match["utterance"], match["code"], start, end, vad, source)


def _label(code: str, merge_excited: bool) -> str | None:
    if code == EXCITED and merge_excited:
        return FOUR_CLASS["hap"]
    return FOUR_CLASS.get(code)


def _clip(session_dir: Path, evaluation: Evaluation, merge_excited: bool) -> Clip | ScanProblem:
    wav = session_dir / WAV_DIR / evaluation.dialog / f"{evaluation.utterance}{WAV_SUFFIX}"
    label = _label(evaluation.code, merge_excited)
    if label is None:
        meaning = OTHER_CODES.get(evaluation.code, "unknown code")
        return ScanProblem(
            str(wav),
            f"label {evaluation.code!r} ({meaning}) is outside the 4-class task {LABELS}",
            OUT_OF_SCOPE,
        )
    speaker = speaker_of(evaluation.utterance)
    if speaker is None:
        return ScanProblem(
            str(evaluation.source),
            f"utterance id {evaluation.utterance!r} does not end in _F.../_M... (speaker unknown)",
            BAD_NAME,
        )
    if not wav.is_file():
        return ScanProblem(
            str(wav), f"labelled in {evaluation.source.name} but the wav is missing", MISSING_FILE
        )
    return Clip(
        clip_id=evaluation.utterance,
        corpus=CORPUS,
        speaker=speaker,
        label=LABELS.index(label),
        label_name=label,
        audio_path=str(wav),
        extra={
            "session": int(SESSION_FOLDER.match(session_dir.name).group(1)),
            "dialog": evaluation.dialog,
            "improvised": "_impro" in evaluation.dialog,
            "source_label": evaluation.code,
            "start": evaluation.start,
            "end": evaluation.end,
            **dict(zip(VAD_NAMES, evaluation.vad)),
        },
    )


def _unlabelled_files(wav_dir: Path, labelled: set[str]) -> list[ScanProblem]:
    """Files in the sentence folders that no evaluation line names."""
    if not wav_dir.is_dir():
        return []
    return [
        ScanProblem(str(path), "no EmoEvaluation line names this file", UNKNOWN_FILE)
        for path in files_under(wav_dir)
        if path.suffix.lower() != WAV_SUFFIX or path.stem not in labelled
    ]
