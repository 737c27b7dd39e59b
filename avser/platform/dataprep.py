"""Corpus -> manifest -> feature store, each step skipped when done."""

from __future__ import annotations

from pathlib import Path

from avser import config as configlib
from avser.data.manifest import write_manifest
from avser.platform.config import DataPrepConfig, PreprocessConfig
from avser.platform.preprocess import run_preprocess


def prepare_store(cfg: DataPrepConfig, progress: bool = True) -> Path:
    root, manifest = Path(cfg.root), Path(cfg.manifest)
    if cfg.corpus == "synthetic" and not (root / "corpus.json").is_file():
        from avser.data.synthetic import generate_corpus

        print(f"writing the synthetic corpus ({cfg.synth_clips} clips) to {root}")
        generate_corpus(root, cfg.synth_clips, seed=cfg.synth_seed, progress=progress)
    if not manifest.is_file():
        from avser.data.corpora import scan_corpus

        write_manifest(scan_corpus(cfg.corpus, root).to_frame(), manifest)
    pre_cfg = configlib.load(PreprocessConfig, cfg.preprocess_config)
    report = run_preprocess(manifest, cfg.store, pre_cfg, progress=progress)
    print(f"feature store {cfg.store}: {report.computed} clips computed, "
          f"{report.skipped} already stored\n{report.summary}")
    return Path(cfg.store)
