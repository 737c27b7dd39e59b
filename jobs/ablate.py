"""Ray Tune job: an ablation grid (cells x seeds), one training run per pair.

    ray job submit --working-dir . -- python jobs/ablate.py --config configs/ablation_table3.yaml

Re-running the same command trains only the runs that have not finished and
rebuilds the table; its results (CSV, Markdown, bar chart) are written to
--out and logged on the ablation's MLflow parent run.
"""

from __future__ import annotations

import argparse
import sys

from avser import config
from avser.platform.ablation import AblationConfig, run_ablation
from avser.platform.cluster import init_ray
from avser.platform.dataprep import prepare_store
from avser.platform.jobs import job_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="configs/ablation_table3.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. seeds=[0,1,2,3]")
    parser.add_argument("--out", default=None,
                        help="folder for the results (default: STORAGE_PATH/NAME-results)")
    return parser.parse_args(argv)


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config.load(AblationConfig, args.config, args.set)
    init_ray()
    store = prepare_store(cfg.data)
    result = run_ablation(cfg, store, args.out)
    print(result.markdown())
    print(f"results: {result.chart.parent} (ablation.csv, ablation.md, ablation.png, runs.csv), "
          f"and on MLflow run {result.parent_run_id}")
    if result.missing:
        print(f"{len(result.missing)} run(s) did not finish: {', '.join(result.missing)}; "
              "run the same command again to train only those", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
