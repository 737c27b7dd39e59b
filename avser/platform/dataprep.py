"""Corpus -> manifest -> feature store, each step skipped when already done.

"Done" means done for this config: the synthetic corpus is topped up to
``synth_clips`` (and a folder made with another seed is refused, not reused),
the manifest is rescanned (cheap) and rewritten only when the corpus changed,
and the store recomputes only clips whose files or feature config changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from avser import config as configlib
from avser.data.manifest import read_manifest, write_manifest
from avser.platform.config import DataPrepConfig, PreprocessConfig
from avser.platform.preprocess import run_preprocess


def _synthetic_clip_count(root: Path) -> int:
    """Clips the corpus description lists (0 when there is none yet)."""
    from avser.data.synthetic import CORPUS_FILE

    meta = root / CORPUS_FILE
    if not meta.is_file():
        return 0
    try:
        return len(json.loads(meta.read_text()).get("clips", []))
    except json.JSONDecodeError:
        return 0  # generate_corpus reports the damaged file itself


def _ensure_synthetic_corpus(cfg: DataPrepConfig, progress: bool) -> None:
    """generate_corpus keeps the clips already written, so this only adds what is missing."""
    from avser.data.synthetic import SynthConfig, generate_corpus

    root = Path(cfg.root)
    synth_cfg = configlib.load(SynthConfig, cfg.synth_config)
    writing = _synthetic_clip_count(root) != cfg.synth_clips
    if writing:
        print(f"writing the synthetic corpus ({cfg.synth_clips} clips) to {root}")
    generate_corpus(root, cfg.synth_clips, seed=cfg.synth_seed, cfg=synth_cfg,
                    progress=progress and writing)


def _update_manifest(cfg: DataPrepConfig) -> Path:
    """Rescan the corpus; rewrite the manifest only when its clips changed."""
    from avser.data.corpora import require_clips, scan_corpus

    manifest = Path(cfg.manifest)
    scanned = require_clips(cfg.corpus, cfg.root, scan_corpus(cfg.corpus, cfg.root)).to_frame()
    if manifest.is_file() and _same_clips(read_manifest(manifest), scanned):
        return manifest
    return write_manifest(scanned, manifest)


def _same_clips(stored: pd.DataFrame, scanned: pd.DataFrame) -> bool:
    columns = list(scanned.columns)
    if list(stored.columns) != columns or len(stored) != len(scanned):
        return False
    return stored.reset_index(drop=True).equals(scanned.reset_index(drop=True))


def prepare_store(cfg: DataPrepConfig, progress: bool = True) -> Path:
    if cfg.corpus == "synthetic":
        _ensure_synthetic_corpus(cfg, progress)
    manifest = _update_manifest(cfg)
    pre_cfg = configlib.load(PreprocessConfig, cfg.preprocess_config)
    report = run_preprocess(manifest, cfg.store, pre_cfg, progress=progress)
    print(f"feature store {cfg.store}: {report.computed} clips computed, "
          f"{report.skipped} already stored\n{report.summary}")
    return Path(cfg.store)
