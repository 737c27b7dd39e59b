"""Platform overhead per Tune trial, and one KLDA trial vs one training trial.

    .venv/bin/python bench/tune.py [--samples 3] [--epochs 3]

Runs the smoke search (tiny model, synthetic corpus) twice in one process,
in a temporary folder with its own MLflow store: single-worker trials that
train inside the Tune trial (the default), then the same trials each driving
a Ray Train run (``single_worker_in_trial=false``, what every trial did
before). Per trial: Tune's wall time, the training loop's own time (sum of
the per-epoch train + validation times the loop reports) and the
difference, the platform's overhead (start-up, checkpointing, reporting, the
final evaluation and KLDA head, MLflow logging). Last line: one KLDA gamma
trial (fit + score on cached hybrid features) against one training trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="avser-bench-tune-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.chdir(REPO)

    from avser.platform.cluster import init_ray

    init_ray()
    for in_trial in (True, False):
        search(work, args, in_trial)


def search(work: Path, args: argparse.Namespace, in_trial: bool) -> None:
    from avser import config
    from avser.platform.dataprep import prepare_store
    from avser.platform.search import run_search
    from avser.platform.tune import TuneConfig

    name = "bench-tune-in-trial" if in_trial else "bench-tune-train-run"
    overrides = [f"data.root={work}/synthetic", f"data.manifest={work}/manifest.parquet",
                 f"data.store={work}/store", f"storage_path={work}/ray_results",
                 f"num_samples={args.samples}", f"name={name}",
                 f"single_worker_in_trial={str(in_trial).lower()}",
                 f"train_overrides=[optim.max_epochs={args.epochs},optim.batch_size=8,max_failures=0]"]
    cfg = config.load(TuneConfig, "configs/tune_smoke.yaml", overrides)
    store = prepare_store(cfg.data, progress=False)
    started = time.perf_counter()
    result = run_search(cfg, store)
    total = time.perf_counter() - started
    trials = result.trials[result.trials["finished"]]
    kind = "trials train inside the Tune trial" if in_trial else "each trial drives a Ray Train run"
    print(f"\n{kind}: load average {os.getloadavg()[0]:.2f}; search wall time {total:.1f} s; "
          f"{len(result.trials)} trials, {len(trials)} trained to the end\n")
    print("| trial | epochs | trial s | training loop s | platform overhead s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for _, row in trials.iterrows():
        overhead = row["trial_seconds"] - row["loop_seconds"]
        print(f"| {row['trial_id']} | {int(row['epochs']) - 1} | {row['trial_seconds']:.1f} | "
              f"{row['loop_seconds']:.1f} | {overhead:.1f} |")
    mean_trial = trials["trial_seconds"].mean()
    print(f"\none KLDA gamma trial: {1000 * result.klda_seconds_per_trial:.1f} ms; one training trial: "
          f"{mean_trial:.1f} s ({mean_trial / result.klda_seconds_per_trial:.0f}x)")


if __name__ == "__main__":
    main()
