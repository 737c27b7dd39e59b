"""Shared command-line plumbing of the jobs (jobs/*.py stay thin)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from avser import config as configlib
from avser.errors import EXIT_BAD_INPUT, AvserError, error_line
from avser.platform.config import TrainConfig

JobMain = Callable[[list[str] | None], int]


def job_main(main: JobMain) -> JobMain:
    """Decorate a job's ``main(argv)``: an ``AvserError`` (bad config, missing
    file, ...) is one line on stderr and exit code 2, as in the ``avser``
    command, instead of a traceback. Other exceptions are bugs: they keep theirs."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except AvserError as exc:
            print(error_line(exc), file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


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
