"""The manifest: one row per clip of a corpus, stored as Parquet.

Columns (DESIGN.md): clip_id, corpus, speaker, label, label_name,
audio_path, video_path, landmarks_path, extra. ``label`` is the index of
``label_name`` in the corpus's own label list; ``extra`` is a JSON string of
corpus-specific fields (statement, intensity, session, ...).

Scanners (``avser.data.<corpus>``) return a ScanResult: the clips, the
corpus's ordered label list, and a ScanProblem for every file they saw and
did not keep, each with a ``kind`` (the constants below) for summaries.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from avser.errors import AvserError, ClipError

# Kinds of ScanProblem, stable short codes for grouping in summaries.
UNKNOWN_FILE = "unknown_file"  # a file that is not one of the corpus's clips
BAD_NAME = "bad_name"  # a clip file whose name/folder codes cannot be read
UNKNOWN_LABEL = "unknown_label"  # an emotion code outside the corpus's list
INCONSISTENT = "inconsistent"  # name and folder (or extension) disagree
DUPLICATE = "duplicate"  # a second file for a clip id already taken
MISSING_FILE = "missing_file"  # a labelled clip whose media file is absent
OUT_OF_SCOPE = "out_of_scope"  # a real clip whose label the task does not use
EXCLUDED = "excluded"  # a real clip left out by a scanner option

COLUMNS = [
    "clip_id",
    "corpus",
    "speaker",
    "label",
    "label_name",
    "audio_path",
    "video_path",
    "landmarks_path",
    "extra",
]


@dataclass
class Clip:
    clip_id: str
    corpus: str
    speaker: str
    label: int
    label_name: str
    audio_path: str | None = None
    video_path: str | None = None
    landmarks_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["extra"] = json.dumps(self.extra, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Clip":
        values = {k: row.get(k) for k in COLUMNS}
        for key in ("audio_path", "video_path", "landmarks_path"):
            if values[key] is not None and pd.isna(values[key]):
                values[key] = None
        values["extra"] = _extra_of(values["clip_id"], values.get("extra"))
        values["label"] = _label_of(values["clip_id"], values["label"])
        return cls(**values)


_REMAKE = "re-create the manifest with `avser manifest`, or fix that row"


def _label_of(clip_id: Any, raw: Any) -> int:
    """The integer label index, or an error naming the clip (3.0 and "3" are 3; 3.5 is not)."""
    try:
        label = int(raw)
        whole = not isinstance(raw, bool) and float(raw) == label
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise AvserError(f"clip {clip_id}: label {raw!r} is not an integer (the index of "
                         f"label_name in the corpus's label list); {_REMAKE}")
    return label


def _extra_of(clip_id: Any, raw: Any) -> dict[str, Any]:
    """The ``extra`` JSON object ({} when empty), or an error naming the clip."""
    if isinstance(raw, dict):
        return dict(raw)
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        extra = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AvserError(f"clip {clip_id}: extra {raw[:60]!r} is not valid JSON ({exc}); "
                         f"{_REMAKE}") from exc
    if not isinstance(extra, dict):
        raise AvserError(f"clip {clip_id}: extra must be a JSON object, got {raw[:60]!r}; {_REMAKE}")
    return extra


@dataclass
class ScanProblem:
    """A file a scanner saw but could not turn into a clip, and why."""

    path: str
    reason: str
    kind: str = UNKNOWN_FILE

    @classmethod
    def from_error(cls, exc: ClipError, kind: str | None = None) -> "ScanProblem":
        """The problem an error raised while reading one file stands for."""
        reason = f"{exc.detail} ({exc.hint})" if exc.hint else exc.detail
        return cls(path=exc.path or "", reason=reason, kind=kind or exc.reason)


@dataclass
class ScanResult:
    clips: list[Clip]
    problems: list[ScanProblem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return clips_to_frame(self.clips)

    def problem_counts(self) -> dict[str, int]:
        """How many problems of each kind, e.g. ``{"out_of_scope": 5462}``."""
        return dict(sorted(Counter(p.kind for p in self.problems).items()))


def corpus_root(root: str | Path, corpus: str) -> Path:
    """``root`` as an absolute folder, or an error naming it."""
    # abspath, not resolve: normalise "..", keep the user's symlinks in paths.
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.is_dir():
        raise AvserError(
            f"{corpus} root {path} does not exist or is not a folder; "
            f"pass the folder that holds the {corpus} files"
        )
    return path


def files_under(folder: Path) -> list[Path]:
    """Every plain file below ``folder``, in a stable (sorted) order.

    Symbolic links are followed (a corpus copy often links its speaker
    folders to another disk) and paths keep the links' names; a folder
    reached twice (a link loop, or two links to one place) is read once.
    """
    files = []
    seen: set[tuple[int, int]] = set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []  # and do not descend into it again
            continue
        seen.add((stat.st_dev, stat.st_ino))
        files.extend(path for name in names if (path := Path(top) / name).is_file())
    return sorted(files)


def keep_first(clips: Iterable[Clip]) -> tuple[list[Clip], list[ScanProblem]]:
    """Clips with unique ids (the first seen kept), sorted by id, plus one
    DUPLICATE problem per repeated id, so a second copy is never silently lost."""
    kept: dict[str, Clip] = {}
    problems = []
    for clip in clips:
        first = kept.setdefault(clip.clip_id, clip)
        if first is not clip:
            problems.append(
                ScanProblem(
                    path=str(_media_path(clip)),
                    reason=(
                        f"clip id {clip.clip_id} is already taken by "
                        f"{_media_path(first)}; remove one of the two copies"
                    ),
                    kind=DUPLICATE,
                )
            )
    return sorted(kept.values(), key=lambda c: c.clip_id), problems


def _media_path(clip: Clip) -> str | None:
    return clip.audio_path or clip.video_path


def clips_to_frame(clips: Iterable[Clip]) -> pd.DataFrame:
    rows = [c.to_row() for c in clips]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"label": "int64"})


def write_manifest(clips: Iterable[Clip] | pd.DataFrame, path: str | Path) -> Path:
    frame = clips if isinstance(clips, pd.DataFrame) else clips_to_frame(clips)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise AvserError(
            f"manifest {path} does not exist; create it with "
            "`avser manifest --corpus NAME --root DIR --out FILE`"
        )
    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise AvserError(f"manifest {path} cannot be read as Parquet ({exc}); "
                         "re-create it with `avser manifest`") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise AvserError(f"manifest {path} lacks columns {missing}; re-create it")
    _check_rows(frame, path)
    return frame


def _check_rows(frame: pd.DataFrame, path: Path) -> None:
    """Every row must make a Clip: a bad label or extra is reported with the
    file now, not as a bare error inside a preprocessing actor later."""
    for row in frame.to_dict("records"):
        try:
            Clip.from_row(row)
        except AvserError as exc:
            raise AvserError(f"manifest {path}: {exc}") from exc


def read_clips(path: str | Path) -> list[Clip]:
    return [Clip.from_row(r) for r in read_manifest(path).to_dict("records")]


def summarize_problems(problems: Iterable[ScanProblem], per_kind: int = 3) -> str:
    """Problem counts by kind with a few examples each, for `avser manifest`."""
    by_kind: dict[str, list[ScanProblem]] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    if not by_kind:
        return "no problems"
    lines = []
    for kind, group in sorted(by_kind.items()):
        lines.append(f"{kind}: {len(group)}")
        lines.extend(f"  {p.path}: {p.reason}" for p in group[:per_kind])
        if len(group) > per_kind:
            lines.append(f"  ... and {len(group) - per_kind} more")
    return "\n".join(lines)


def summarize(frame: pd.DataFrame) -> str:
    """Counts per label and per speaker, as printed by `avser manifest`."""
    lines = [
        f"{len(frame)} clips, {frame['speaker'].nunique()} speakers, "
        f"{frame['label_name'].nunique()} labels"
    ]
    lines.append("per label:")
    for name, n in sorted(Counter(frame["label_name"]).items()):
        lines.append(f"  {name:<12} {n}")
    lines.append("per speaker:")
    for name, n in sorted(Counter(frame["speaker"]).items()):
        lines.append(f"  {name:<12} {n}")
    return "\n".join(lines)
