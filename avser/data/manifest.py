"""The manifest: one row per clip of a corpus, stored as Parquet.

Columns (DESIGN.md): clip_id, corpus, speaker, label, label_name,
audio_path, video_path, landmarks_path, extra. ``label`` is the index of
``label_name`` in the corpus's own label list; ``extra`` is a JSON string of
corpus-specific fields (statement, intensity, session, ...).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from avser.errors import AvserError

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
        extra = values.get("extra")
        values["extra"] = json.loads(extra) if isinstance(extra, str) and extra else {}
        values["label"] = int(values["label"])
        return cls(**values)


@dataclass
class ScanProblem:
    """A file a scanner saw but could not turn into a clip, and why."""

    path: str
    reason: str


@dataclass
class ScanResult:
    clips: list[Clip]
    problems: list[ScanProblem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return clips_to_frame(self.clips)


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
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise AvserError(f"manifest {path} lacks columns {missing}; re-create it")
    return frame


def read_clips(path: str | Path) -> list[Clip]:
    return [Clip.from_row(r) for r in read_manifest(path).to_dict("records")]


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
