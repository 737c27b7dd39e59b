"""Ablations as one job: cells x seeds, every pair a training run.

A cell is a named change to one base recipe: ``params`` (dotted training
keys, ``model.*`` keys for the model config, as in a search space) and an
initialisation, ``scratch`` or ``pretrained`` (the RACNN of a speech
pretraining on the same split and seed: the paper's Table III). The runs are
the trials of a Ray Tune grid, as many at once as the cluster's CPUs and
``max_concurrent_cells`` allow; the pretrainings the cells need are a grid of
their own, run first.

MLflow: one parent run per ablation (keyed by its name) and a child per cell
and seed, keyed by the cell, the seed and a digest of the run's effective
config. A re-run trains only the runs with no finished child under their key
(an interrupted grid resumes its trials from their checkpoints), so adding a
seed or a cell costs only the new runs. The parent holds the results table,
mean ± std per cell over the seeds (CSV and Markdown), and a bar chart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avser import config as configlib
from avser.data.splits import make_splits
from avser.errors import ConfigError
from avser.platform import runs, storage, tracking
from avser.platform.config import DataPrepConfig, TrainConfig, resolve_paths
from avser.platform.experiments import (
    datasets_for, loop_config_for, model_config_for, store_setup,
)
from avser.platform.train import FINISHED_KEY
from avser.platform.tune import apply_params, train_trial, trial_resources

SCRATCH, PRETRAINED = "scratch", "pretrained"
CELL_INITS = (SCRATCH, PRETRAINED)
# What the table reports per cell: (metric, column header).
RESULT_METRICS = (("test_ua", "network test UA"), ("klda_test_ua", "KLDA test UA"),
                  ("final_val_ua", "val UA"))
CHECKPOINT_TAG = "avser.final_checkpoint"  # on a pretraining's run: where its weights are
CELL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class AblationCell:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    init: str = SCRATCH  # scratch | pretrained

    def __post_init__(self) -> None:
        if not CELL_NAME.match(self.name):
            raise ConfigError(f"cell name {self.name!r}: use letters, digits, '_', '-' and '.'")
        if self.init not in CELL_INITS:
            raise ConfigError(f"cell {self.name}: init={self.init!r}; choose one of {CELL_INITS}")

    def describe(self) -> str:
        changes = [f"{k}={v}" for k, v in self.params.items()]
        if self.init == PRETRAINED:
            changes.append("pretrained RACNN")
        return ", ".join(changes) or "base recipe"


@dataclass
class AblationConfig:
    data: DataPrepConfig = field(default_factory=DataPrepConfig)
    train_config: str = "configs/ablation_demo.yaml"
    train_overrides: list[str] = field(default_factory=list)
    # Changes to the base recipe for the speech pretraining of `pretrained` cells.
    pretrain_params: dict[str, Any] = field(default_factory=dict)
    name: str = "ablation"  # MLflow parent run key; Tune run names start with it
    experiment: str = "avser-ablation"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seed_splits: bool = True  # each seed also draws its own split (split.seed)
    max_concurrent_cells: int = 2
    max_failures: int = 1  # per run, Tune level
    storage_path: str = "ray_results"
    cells: list[AblationCell] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [c.name for c in self.cells]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"cells {names}: an ablation needs at least one cell, "
                              "each with a name of its own")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds}: give at least one seed, each once")
        if self.max_concurrent_cells < 1 or self.max_failures < 0:
            raise ConfigError(f"max_concurrent_cells ({self.max_concurrent_cells}) must be >= 1 "
                              f"and max_failures ({self.max_failures}) >= 0")


@dataclass
class PlannedRun:
    """One training of the ablation: a cell (or a pretraining) at one seed."""

    cell: str
    seed: int
    cfg: TrainConfig
    run_name: str
    pretrain_run: str | None = None  # the pretraining whose RACNN it starts from


# ------------------------------------------------------------------- the plan


def _seed_params(acfg: AblationConfig, seed: int) -> dict[str, Any]:
    return {"seed": seed, **({"split.seed": seed} if acfg.seed_splits else {})}


def _planned(acfg: AblationConfig, cell: str, seed: int, cfg: TrainConfig, n_classes: int,
             pretrain_run: str | None = None) -> PlannedRun:
    model_cfg = model_config_for(cfg, n_classes)  # a bad model.* key fails here, before training
    digest = configlib.config_hash({"train": configlib.to_dict(cfg), "model": configlib.to_dict(model_cfg),
                                    "pretrain": pretrain_run})
    return PlannedRun(cell, seed, cfg, f"{acfg.name}-{cell}-s{seed}-{digest[:8]}", pretrain_run)


def plan(acfg: AblationConfig, base: TrainConfig, n_classes: int
         ) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(pretrainings, cell runs): every training the ablation is made of."""
    pretrains: dict[int, PlannedRun] = {}
    cells = []
    for seed in acfg.seeds:
        seeded = _seed_params(acfg, seed)
        for cell in acfg.cells:
            pretrain = None
            if cell.init == PRETRAINED:
                if seed not in pretrains:
                    cfg = apply_params(base, {**acfg.pretrain_params, **seeded, "stage": "pretrain",
                                              "init": SCRATCH})
                    pretrains[seed] = _planned(acfg, "pretrain", seed, cfg, n_classes)
                pretrain = pretrains[seed].run_name
            cfg = apply_params(base, {**cell.params, **seeded, "init": SCRATCH})
            cells.append(_planned(acfg, cell.name, seed, cfg, n_classes, pretrain))
    return list(pretrains.values()), cells


# ------------------------------------------------------------------- running


@dataclass
class GridJob:
    """What every trial of a grid needs, shipped once through the object store."""

    loop_configs: dict[str, dict[str, Any]]  # run name -> loop config
    configs: dict[str, dict[str, Any]]  # run name -> TrainConfig as a dict
    data_keys: dict[str, str]  # run name -> key into datasets
    datasets: dict[str, dict[str, Any]]  # key -> name -> materialized ray.data.Dataset


def cell_trial(params: dict[str, Any], job: GridJob) -> None:
    """One Tune trial: the training of one planned run."""
    name = params["run"]
    cfg = configlib.from_dict(TrainConfig, job.configs[name])
    train_trial(job.loop_configs[name], cfg, job.datasets[job.data_keys[name]], True, name)


def _grid_job(planned: list[PlannedRun], store, setup, tracking_info) -> GridJob:
    """The loop config of every run, and the datasets of each distinct split (and stage)."""
    job = GridJob({}, {}, {}, {})
    for run in planned:
        key = configlib.config_hash({"stage": run.cfg.stage, "split": configlib.to_dict(run.cfg.split),
                                     "seed": run.cfg.seed})
        if key not in job.datasets:
            split = make_splits(setup.meta, run.cfg.split)[run.cfg.fold or 0]
            job.datasets[key] = datasets_for(store, setup.meta, split, run.cfg)
        model_cfg = model_config_for(run.cfg, len(setup.label_names))
        info = tracking_info.with_tags(**{"ablation.cell": run.cell, "ablation.seed": run.seed})
        job.loop_configs[run.run_name] = loop_config_for(run.cfg, model_cfg, setup.label_names,
                                                         run.run_name, info, setup.feature_cfg)
        job.configs[run.run_name] = configlib.to_dict(run.cfg)
        job.data_keys[run.run_name] = key
    return job


def run_grid(acfg: AblationConfig, phase: str, planned: list[PlannedRun], todo: set[str], store,
             setup, tracking_info) -> dict[str, str]:
    """Train the runs named in ``todo`` as one Tune grid; returns run name ->
    final checkpoint of every run that finished.

    The grid is named after all of the phase's ``planned`` runs, so the same
    plan, interrupted, is restored (its trials resume from their checkpoints);
    a changed plan (a seed or a cell added) gets a grid of its own."""
    if not todo:
        return {}
    from ray import tune

    from avser.platform.console import TrialTable

    tune_name = f"{acfg.name}-{phase}-{configlib.config_hash(sorted(r.run_name for r in planned))[:8]}"
    job = _grid_job(planned, store, setup, tracking_info)
    trainable = tune.with_resources(tune.with_parameters(cell_trial, job=job),
                                    trial_resources(planned[0].cfg))
    path = storage.join(storage.resolve(acfg.storage_path), tune_name)
    if tune.Tuner.can_restore(path):
        print(f"resuming {phase} grid {tune_name}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"run": tune.grid_search(sorted(todo))},
            tune_config=tune.TuneConfig(max_concurrent_trials=acfg.max_concurrent_cells,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=tune_name, storage_path=storage.resolve(acfg.storage_path), verbose=0,
                failure_config=tune.FailureConfig(max_failures=acfg.max_failures),
                callbacks=[TrialTable(metric="val_ua")],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    finished = {}
    for result in tuner.fit():
        if (result.metrics or {}).get(FINISHED_KEY) and result.checkpoint is not None:
            finished[result.config["run"]] = storage.checkpoint_uri(result.checkpoint)
    return finished


def finished_children(parent_id: str) -> dict[str, Any]:
    """Run key -> MLflow run of every finished child of the ablation's parent."""
    return {run.data.tags.get(tracking.RUN_KEY_TAG): run
            for run in tracking.child_runs(parent_id, "FINISHED")}


def _pretrained_checkpoints(acfg, pretrains, cells, done, store, setup, info) -> dict[str, str]:
    """Pretraining run name -> its final checkpoint, training the pretrainings
    that unfinished cells need and that have not finished yet."""
    known = {name: run.data.tags[CHECKPOINT_TAG] for name, run in done.items()
             if CHECKPOINT_TAG in run.data.tags}
    needed = {run.pretrain_run for run in cells if run.pretrain_run and run.run_name not in done}
    trained = run_grid(acfg, "pretrain", pretrains, needed - set(known), store, setup, info)
    for name, path in trained.items():
        run_id = tracking.find_run(acfg.experiment, name)
        tracking.client().set_tag(run_id, CHECKPOINT_TAG, path)
    return {**known, **trained}


def _with_init(run: PlannedRun, checkpoints: dict[str, str]) -> PlannedRun | None:
    if run.pretrain_run is None:
        return run
    if run.pretrain_run not in checkpoints:
        return None  # its pretraining failed; reported with the missing runs
    return replace(run, cfg=replace(run.cfg, init=f"checkpoint:{checkpoints[run.pretrain_run]}"))


# ------------------------------------------------------------------- results


@dataclass
class AblationResult:
    runs: pd.DataFrame  # one row per planned cell run: cell, seed, run name, metrics
    table: pd.DataFrame  # one row per cell: mean and std of each result metric
    missing: list[str]  # planned runs that did not finish
    parent_run_id: str
    chart: Path | None = None

    def markdown(self) -> str:
        return results_markdown(self.table)


def run_frame(cells: list[PlannedRun], children: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for run in cells:
        child = children.get(run.run_name)
        metrics = child.data.metrics if child is not None else {}
        rows.append({"cell": run.cell, "seed": run.seed, "run_name": run.run_name,
                     "finished": child is not None,
                     **{key: metrics.get(key, np.nan) for key, _ in RESULT_METRICS}})
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, acfg: AblationConfig) -> pd.DataFrame:
    rows = []
    for cell in acfg.cells:
        done = frame[(frame["cell"] == cell.name) & frame["finished"]]
        row = {"cell": cell.name, "changes": cell.describe(), "runs": len(done)}
        for key, _ in RESULT_METRICS:
            values = done[key].dropna()
            row[f"{key}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{key}_std"] = float(values.std(ddof=0)) if len(values) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def results_markdown(table: pd.DataFrame) -> str:
    headers = ["cell", "changes", "runs", *(label for _, label in RESULT_METRICS)]
    lines = ["| " + " | ".join(headers) + " |", "| --- | --- | ---: |" + " ---: |" * len(RESULT_METRICS)]
    for _, row in table.iterrows():
        cells = [f"`{row['cell']}`", row["changes"], str(row["runs"])]
        for key, _ in RESULT_METRICS:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            cells.append("-" if np.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Grouped bars, one group per cell: mean test UA of each head, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(key, label) for key, label in RESULT_METRICS if key != "final_val_ua"
               and table[f"{key}_mean"].notna().any()]
    x = np.arange(len(table))
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(table)), 4.0))
    for i, (key, label) in enumerate(metrics):
        shown = table[f"{key}_mean"].notna().to_numpy()  # no bar where a cell has no such head
        ax.bar((x + (i - (len(metrics) - 1) / 2) * width)[shown], 100 * table[f"{key}_mean"][shown],
               width, yerr=100 * table[f"{key}_std"][shown], capsize=3, label=label)
    ax.set_xticks(x, table["cell"], rotation=30, ha="right")
    ax.set_ylabel("UA (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log_results(parent_id: str, result: AblationResult, acfg: AblationConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "ablation.csv", index=False)
    result.runs.to_csv(out / "runs.csv", index=False)
    (out / "ablation.md").write_text(result.markdown() + "\n")
    result.chart = plot_results(result.table, out / "ablation.png",
                                f"{acfg.name}: mean ± std over seeds {acfg.seeds}")
    for name in ("ablation.csv", "runs.csv", "ablation.md", "ablation.png"):
        tracking.log_artifact_file(parent_id, out / name)
    for _, row in result.table.iterrows():
        tracking.log_metrics(parent_id, {f"{row['cell']}.{key}_{stat}": row[f"{key}_{stat}"]
                                         for key, _ in RESULT_METRICS for stat in ("mean", "std")
                                         if not np.isnan(row[f"{key}_mean"])}, step=0)


def results_folder(acfg: AblationConfig, out: str | Path | None) -> Path:
    """Where the results table is written besides MLflow: ``out``, else next
    to the checkpoints when they are local, else the working directory."""
    if out:
        return Path(out)
    where = storage.resolve(acfg.storage_path)
    return Path(where if not storage.is_uri(where) else ".", f"{acfg.name}-results")


def run_ablation(acfg: AblationConfig, store: str | Path, out: str | Path | None = None) -> AblationResult:
    base = resolve_paths(configlib.load(TrainConfig, acfg.train_config, [
        *acfg.train_overrides, f"storage_path={storage.resolve(acfg.storage_path)}"]))
    setup = store_setup(store, base.split.protocol, {"ablation": acfg.name})
    pretrains, cells = plan(acfg, base, len(setup.label_names))
    resumed = tracking.find_run(acfg.experiment, acfg.name) is not None
    parent_id = tracking.start_run(acfg.experiment, run_key=acfg.name, run_name=acfg.name,
                                   tags=setup.tags)
    if not resumed:  # params are immutable, and a re-run may add seeds or cells
        tracking.log_params(parent_id, {"base": base})
    tracking.log_dict(parent_id, configlib.to_dict(acfg), "ablation.json")  # the latest plan
    info = runs.tracking_info(acfg.experiment, setup, parent_run_id=parent_id, register=False,
                              figures=False)
    done = finished_children(parent_id)
    todo = [run for run in cells if run.run_name not in done]
    print(f"ablation {acfg.name}: {len(cells)} runs ({len(acfg.cells)} cells x {len(acfg.seeds)} "
          f"seeds), {len(cells) - len(todo)} already finished", flush=True)
    checkpoints = _pretrained_checkpoints(acfg, pretrains, cells, done, store, setup, info)
    ready = [r for r in (_with_init(run, checkpoints) for run in cells) if r is not None]
    run_grid(acfg, "cells", ready, {r.run_name for r in ready} & {r.run_name for r in todo},
             store, setup, info)
    frame = run_frame(cells, finished_children(parent_id))
    result = AblationResult(runs=frame, table=summarize(frame, acfg),
                            missing=list(frame.loc[~frame["finished"], "run_name"]),
                            parent_run_id=parent_id)
    _log_results(parent_id, result, acfg, results_folder(acfg, out))
    tracking.finish_run(parent_id, status="FINISHED" if not result.missing else "FAILED")
    return result
