"""Ray Tune job: two-stage search of the audio-visual model, best model registered.

    ray job submit --working-dir . -- python jobs/tune_fusion.py --config configs/tune_fusion.yaml

Re-running the same command after an interruption resumes the search.
"""

from __future__ import annotations

import argparse
import sys

from avser import config
from avser.platform import tracking
from avser.platform.cluster import init_ray
from avser.platform.dataprep import prepare_store
from avser.platform.jobs import job_main
from avser.platform.search import run_search
from avser.platform.tune import TuneConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="configs/tune_fusion.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. num_samples=16")
    return parser.parse_args(argv)


def results_command(tracking_uri: str) -> str:
    """Where a user looks at the search: the server itself, or `mlflow ui` on the store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return f"mlflow ui --backend-store-uri {tracking_uri}"


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config.load(TuneConfig, args.config, args.set)
    init_ray()
    store = prepare_store(cfg.data)
    result = run_search(cfg, store)
    print(result.trials.drop(columns=["checkpoint_path"]).to_string(index=False))
    print(result.summary())
    print(f"open the results: {results_command(tracking.tracking_uri())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
