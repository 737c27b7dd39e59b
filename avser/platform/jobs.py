"""Shared command-line plumbing of the training jobs (jobs/*.py stay thin)."""

from __future__ import annotations

import argparse

from avser import config as configlib
from avser.platform.config import TrainConfig


def training_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--store", required=True, help="feature store folder (jobs/preprocess.py)")
    parser.add_argument("--config", default=default_config, help="training config YAML")
    parser.add_argument("--protocol", choices=["random", "speaker"], default=None)
    parser.add_argument("--test-speakers", default=None,
                        help="comma-separated held-out speakers (speaker protocol)")
    parser.add_argument("--folds", type=int, default=None, help="k-fold by speaker")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--run-name", default=None,
                        help="fixed run name; the same name resumes that run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. optim.lr=3e-4")
    return parser


def training_config(args: argparse.Namespace, extra: list[str] | None = None) -> TrainConfig:
    overrides = list(extra or [])
    if args.protocol:
        overrides.append(f"split.protocol={args.protocol}")
    if args.test_speakers:
        overrides.append(f"split.test_speakers=[{args.test_speakers}]")
    if args.folds:
        overrides.append(f"split.n_folds={args.folds}")
    if args.num_workers:
        overrides.append(f"num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("use_gpu=true")
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    return configlib.load(TrainConfig, args.config, overrides + list(args.set))


def print_result(result) -> None:
    print(result.table())
    for fold in result.folds:
        print(f"{fold.name}: run {fold.run_name}, checkpoint {fold.checkpoint_path}")
