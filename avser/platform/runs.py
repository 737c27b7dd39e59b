"""What every training, search and ablation driver sets up the same way:
the tags a run carries (protocol, corpus, data hash, git commit, version),
the data hash itself, and the typed tracking information that travels to
the Ray workers with the loop config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

import avser
from avser.data.fingerprint import file_fingerprint
from avser.data.manifest import COLUMNS as MANIFEST_COLUMNS
from avser.features.config import FeatureConfig
from avser.platform import tracking

PROTOCOL_TAG = "avser.protocol"
CORPUS_TAG = "avser.corpus"
DATA_HASH_TAG = "avser.data_hash"
VERSION_TAG = "avser.version"
COMMAND_TAG = "avser.command"  # the driver's command line
# Speakers of a run's training and validation clips: a promotion gate checks
# that its evaluation speakers are none of them.
TRAIN_SPEAKERS_TAG = "avser.train_speakers"
SPEAKER_SEPARATOR = ","


def speakers_tag(meta: pd.DataFrame, rows) -> dict[str, str]:
    """``{TRAIN_SPEAKERS_TAG: "a,b,c"}`` for the given row positions of ``meta``."""
    speakers = sorted(map(str, meta["speaker"].iloc[list(rows)].unique()))
    return {TRAIN_SPEAKERS_TAG: SPEAKER_SEPARATOR.join(speakers)}
HASH_CHARS = 16  # same length as avser.config.config_hash
GIT_TIMEOUT_S = 10
UNKNOWN_COMMIT = "unknown"
MANIFEST_FILE_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c.endswith("_path"))


@dataclass
class TrackingInfo:
    """Where and how the per-worker loop logs (rank 0 only)."""

    experiment: str
    uri: str  # the MLflow store, resolved by the driver
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    register: bool = True  # log and register the model at the end
    # Curves and confusion PNGs at the end; search trials skip them (their
    # metrics are in MLflow, and the search's parent run gets the plots).
    figures: bool = True
    # Diagnostics: each rank writes the clip ids of its first epoch here.
    shard_log_dir: str | None = None

    def with_tags(self, **extra: str) -> "TrackingInfo":
        return dataclasses.replace(self, tags={**self.tags, **extra})


@dataclass
class RunSetup:
    """The store's rows and what every run on them is tagged with."""

    meta: pd.DataFrame
    label_names: list[str]
    corpus: str
    data_hash: str
    tags: dict[str, str]
    feature_cfg: FeatureConfig  # the store's: what a model bundle must reproduce


def set_up(meta: pd.DataFrame, label_names: list[str], protocol: str,
           extra_tags: Mapping[str, Any], feature_cfg: FeatureConfig) -> RunSetup:
    corpus = "+".join(sorted(meta["corpus"].unique()))
    dhash = data_hash(meta)  # rows include each clip's source_key
    return RunSetup(meta, label_names, corpus, dhash,
                    standard_tags(protocol, corpus, dhash, dict(extra_tags)), feature_cfg)


def tracking_info(experiment: str, setup: RunSetup, **kwargs: Any) -> TrackingInfo:
    return TrackingInfo(experiment=experiment, uri=tracking.tracking_uri(), tags=dict(setup.tags),
                        **kwargs)


def git_commit(repo: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: the avser checkout), or
    ``"unknown"`` when it is not a git repository or git is missing."""
    repo = Path(repo) if repo is not None else Path(avser.__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN_COMMIT
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else UNKNOWN_COMMIT


def _file_fingerprint(path: Path) -> str:
    name, size, mtime_ns = file_fingerprint(path)
    return f"{name}\tmissing" if size is None else f"{name}\t{size}\t{mtime_ns}"


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        path = path.resolve()
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return sorted(set(files))


def _manifest_files(manifest: pd.DataFrame) -> list[Path]:
    columns = [c for c in MANIFEST_FILE_COLUMNS if c in manifest.columns]
    values = manifest[columns].to_numpy().ravel() if columns else []
    return _expand(v for v in values if isinstance(v, str) and v)


def data_hash(source: pd.DataFrame | str | Path | Iterable[str | Path]) -> str:
    """Content hash of data: each file's path, size and mtime.

    ``source`` is a manifest DataFrame (its rows plus the files it names are
    hashed, so relabelling changes the hash too), or files/folders (folders
    are walked). A missing file hashes as missing rather than failing.
    """
    digest = hashlib.sha256()
    if isinstance(source, pd.DataFrame):
        rows = source.sort_values("clip_id") if "clip_id" in source.columns else source
        digest.update(rows.to_json(orient="records").encode())
        files = _manifest_files(source)
    else:
        files = _expand([source] if isinstance(source, (str, Path)) else source)
    for path in files:
        digest.update(_file_fingerprint(path).encode() + b"\n")
    return digest.hexdigest()[:HASH_CHARS]


def standard_tags(
    protocol: str,
    corpus: str,
    data_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The tags every avser run carries: protocol, corpus, data hash, git commit, version."""
    tags = {
        PROTOCOL_TAG: protocol,
        CORPUS_TAG: corpus,
        DATA_HASH_TAG: data_hash,
        MLFLOW_GIT_COMMIT: git_commit(),
        VERSION_TAG: avser.__version__,
        COMMAND_TAG: " ".join(["python", *map(shlex.quote, sys.argv)]),
    }
    tags.update(extra or {})
    return {key: str(value) for key, value in tags.items()}


