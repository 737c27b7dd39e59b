"""Ray Train job: pretrain the RACNN (+ speech head) on speech alone.

    python jobs/pretrain_racnn.py --store STORE --config configs/pretrain_ravdess.yaml \
        [--protocol random|speaker] [--test-speakers 13,14,15,16] [--num-workers 2]
"""

from __future__ import annotations

import sys

from avser.platform.cluster import init_ray
from avser.platform.experiments import run_training
from avser.platform.jobs import job_main, print_result, training_config, training_parser


@job_main
def main(argv: list[str] | None = None) -> int:
    args = training_parser(__doc__, "configs/pretrain_ravdess.yaml").parse_args(argv)
    cfg = training_config(args, extra=["stage=pretrain"])
    init_ray(quiet=False)  # the workers' per-epoch lines reach this console
    print_result(run_training(cfg, args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
