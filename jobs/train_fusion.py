"""Ray Train job: train the audio-visual model, then its kernel-LDA head.

    python jobs/train_fusion.py --store STORE --config configs/train_fusion.yaml \
        [--init scratch|checkpoint:PATH|registry:avser-racnn@candidate] [--num-workers 2]
        [--variant speech|speech_appearance|speech_geometry|full|vision]
"""

from __future__ import annotations

import sys
from dataclasses import replace

from avser.models.config import VARIANTS
from avser.platform.cluster import init_ray
from avser.platform.experiments import run_training
from avser.platform.jobs import job_main, print_result, training_config, training_parser


@job_main
def main(argv: list[str] | None = None) -> int:
    parser = training_parser(__doc__, "configs/train_fusion.yaml")
    parser.add_argument("--init", default=None, help="RACNN initialisation (paper Table III)")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="which branches the model builds (the ablations; README)")
    args = parser.parse_args(argv)
    extra = ["stage=fusion"] + ([f"init={args.init}"] if args.init else [])
    cfg = training_config(args, extra=extra)
    if args.variant:  # after the config's own model_overrides, so it wins
        cfg = replace(cfg, model_overrides=[*cfg.model_overrides, f"fusion.variant={args.variant}"])
    init_ray(quiet=False)  # the workers' per-epoch lines reach this console
    print_result(run_training(cfg, args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
