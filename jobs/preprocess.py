"""Ray Data job: manifest -> feature store.

    python jobs/preprocess.py --manifest M.parquet --out STORE [--landmarks dlib]

Exits 0 when at least one clip is usable (failed clips are listed by reason),
1 when no clip of the manifest could be featurized: a wrong backend or paths;
2 with one line on stderr for bad input (config, manifest, a store another run is writing).
"""

from __future__ import annotations

import argparse
import sys

from avser import config
from avser.platform.cluster import init_ray
from avser.platform.config import PreprocessConfig
from avser.platform.jobs import job_main
from avser.platform.preprocess import run_preprocess

EXIT_NOTHING_USABLE = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="feature store folder")
    parser.add_argument("--config", default=None, help="preprocess config YAML")
    parser.add_argument("--landmarks", default=None, help="dlib | openface-csv | openface")
    parser.add_argument("--num-actors", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. features.keyframes.k=5")
    return parser.parse_args(argv)


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    if args.landmarks:
        overrides.append(f"features.landmarks.backend={args.landmarks}")
    if args.num_actors:
        overrides.append(f"num_actors={args.num_actors}")
    cfg = config.load(PreprocessConfig, args.config, overrides)
    init_ray()
    report = run_preprocess(args.manifest, args.out, cfg)
    print(f"{report.total} clips: {report.computed} computed, {report.skipped} already stored, "
          f"{report.seconds:.1f} s")
    print(report.summary)
    if report.failed == report.total:
        print("no clip could be featurized: fix the reasons above and run again "
              "(a clip is recomputed when its files or the config change)")
        return EXIT_NOTHING_USABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
