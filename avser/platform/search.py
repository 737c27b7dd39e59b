"""The search driver: Tune the network, then KLDA, then register the best.

MLflow layout: one parent run per search (keyed by the search name, so a
resumed search logs into the same parent), one child run per trial (keyed by
the trial's run name, so a resumed trial never makes a second child).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from avser import config as configlib
from avser.data.splits import make_splits
from avser.heads import KLDAConfig, evaluate_head, fit_klda_head, save_head
from avser.platform import checkpoint, registry, runs, storage, tracking
from avser.platform.config import TrainConfig, resolve_paths
from avser.platform.experiments import datasets_for, store_setup
from avser.platform.registry import CANDIDATE_ALIAS
from avser.platform.model_card import version_card
from avser.platform.stages import FUSION
from avser.platform.train import FINISHED_KEY
from avser.platform.tune import (
    TuneConfig, TuneJob, build_tuner, parse_space, search_klda,
)

CHECKPOINT_KEY = "checkpoint_path"


@dataclass
class SearchResult:
    trials: pd.DataFrame
    best_trial: str
    network_val_ua: float
    klda_val_ua: float
    klda_params: dict[str, float]
    test_metrics: dict[str, float]
    klda_seconds_per_trial: float
    model_version: int | None
    parent_run_id: str
    protocol: str = ""  # of the split the trials trained and were tested on
    n_test: int = 0

    def summary(self) -> str:
        lines = [
            f"best trial {self.best_trial}: network head val UA {100 * self.network_val_ua:.2f}%, "
            f"KLDA head val UA {100 * self.klda_val_ua:.2f}% "
            f"(gamma={self.klda_params.get('gamma', float('nan')):.3g}, "
            f"reg={self.klda_params.get('reg', float('nan')):.3g})",
            f"test UA, protocol `{self.protocol}`, {self.n_test} clips (reported once, never used "
            "for selection): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.test_metrics.items()),
        ]
        if self.model_version is not None:
            lines.append(f"registered avser version {self.model_version} with alias {CANDIDATE_ALIAS}")
        return "\n".join(lines)


def _loop_seconds(result) -> float:
    """Time the training loop itself took (all epochs), from the trial's reports."""
    history = result.metrics_dataframe
    if history is None or "epoch_seconds" not in history:
        return float("nan")
    return float(history["epoch_seconds"].sum())


def _final_checkpoint(result) -> str | None:
    """Where a finished trial's final checkpoint is: reported by its Train run
    (Train-inside-Tune), or Tune's own checkpoint (a trial that trained itself)."""
    path = (result.metrics or {}).get(CHECKPOINT_KEY)
    if path is None and result.checkpoint is not None:
        path = storage.checkpoint_uri(result.checkpoint)
    return path


def trial_table(grid, space_keys: list[str]) -> pd.DataFrame:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        row = {"trial_id": metrics.get("trial_id", Path(result.path).name),
               "finished": bool(metrics.get(FINISHED_KEY)), "epochs": metrics.get("training_iteration"),
               "val_ua": metrics.get("final_val_ua", metrics.get("val_ua")),
               "test_ua": metrics.get("test_ua"), "klda_val_ua": metrics.get("klda_val_ua"),
               CHECKPOINT_KEY: _final_checkpoint(result) if metrics.get(FINISHED_KEY) else None,
               "error": str(result.error) if result.error else None,
               "trial_seconds": metrics.get("time_total_s"),
               "loop_seconds": _loop_seconds(result)}
        row.update({k: (result.config or {}).get(k) for k in space_keys})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("val_ua", ascending=False, na_position="last")


def _klda_stage(tcfg: TuneConfig, base: TrainConfig, trials: pd.DataFrame, labels: list[str]):
    finished = trials[trials["finished"] & trials[CHECKPOINT_KEY].notna()]
    if finished.empty:
        raise RuntimeError("no trial finished; see the trial table and the Ray logs")
    best = None
    for _, trial in finished.head(tcfg.klda_search.top_trials).iterrows():
        features = checkpoint.load_hybrid_features(trial[CHECKPOINT_KEY])
        study, per_trial = search_klda(features, base.klda, tcfg.klda_search, tcfg.seed, labels)
        if best is None or study.best_value > best[1].best_value:
            best = (trial, study, per_trial, features)
    return best


def _test_metrics(trial, features, head, labels) -> dict[str, float]:
    metrics = {}
    if trial.get("test_ua") is not None and not pd.isna(trial["test_ua"]):
        metrics["network_test_ua"] = float(trial["test_ua"])
    if "test_hybrid" in features:
        metrics["klda_test_ua"] = evaluate_head(head, features["test_hybrid"],
                                                features["test_labels"], labels)["ua"]
    return metrics


def _register_best(tcfg, base, trial, params, klda_cfg, head, labels, parent_id, tags,
                   metrics) -> int:
    """The best trial's network with the searched KLDA head, as one version."""
    tags = {"parent_run_id": parent_id, "trial_id": str(trial["trial_id"]), "search": tcfg.name,
            "klda_gamma": str(klda_cfg.gamma), "klda_reg": str(klda_cfg.reg), **tags}
    card = version_card(f"{tcfg.register_as}: best of search {tcfg.name}", tags, base.split, labels,
                        metrics, made_by=f"search `{tcfg.name}`: trial {trial['trial_id']} "
                        f"({params}), KLDA gamma {klda_cfg.gamma:.3g}, reg {klda_cfg.reg:.3g}")
    with tempfile.TemporaryDirectory() as tmp:
        # The bundle alone: the KLDA stage has read the features, the rest is not needed.
        bundle = storage.download_file(storage.join(trial[CHECKPOINT_KEY], checkpoint.BUNDLE_FILE),
                                       Path(tmp, checkpoint.BUNDLE_FILE))
        head_path = Path(tmp, checkpoint.KLDA_HEAD_FILE)
        save_head(head, head_path)
        return registry.register_version(parent_id, tcfg.register_as, bundle, tags,
                                         head_path=head_path, card=card, metrics=metrics)


def drop_forgotten_children(parent_id: str, trial_ids: set[str]) -> int:
    """Delete the child runs of trials the restored search does not know.

    A driver killed mid-search can have started a trial (and its MLflow run)
    after Tune last saved the search's state; the restored search never runs
    that trial, so its run would be an extra, unfinished child."""
    forgotten = [r for r in tracking.child_runs(parent_id, "RUNNING")
                 if r.data.tags.get("trial_id") not in trial_ids]
    for run in forgotten:
        tracking.client().delete_run(run.info.run_id)
    return len(forgotten)


def close_unfinished_children(parent_id: str) -> int:
    """Trials that ASHA stopped never reach their end of training: mark their
    MLflow runs KILLED so the UI does not show them as still running."""
    runs = tracking.child_runs(parent_id, "RUNNING")
    for run in runs:
        tracking.finish_run(run.info.run_id, status="KILLED")
    return len(runs)


def _log_search(parent_id: str, trials: pd.DataFrame, tcfg: TuneConfig, best_params: dict) -> None:
    from avser.platform.search_plots import log_optuna_plots

    tracking.log_table(parent_id, trials.drop(columns=[CHECKPOINT_KEY]), "trials.csv")
    tracking.log_dict(parent_id, best_params, "best_config.json")
    log_optuna_plots(parent_id, trials, parse_space(tcfg.search_space))


def pretrained_init(tcfg: TuneConfig, store: str | Path) -> str:
    """Pretrain the RACNN on the search's split (a Ray Train run, resumed or
    reported again when it already ran); its final checkpoint as an ``init``."""
    from avser.platform.experiments import run_training

    cfg = resolve_paths(configlib.load(TrainConfig, tcfg.train_config, [
        *tcfg.train_overrides, "stage=pretrain", "init=scratch", f"experiment={tcfg.experiment}",
        f"storage_path={storage.resolve(tcfg.storage_path)}", *tcfg.pretrain_overrides]))
    print(f"pretraining the RACNN on speech ({cfg.optim.max_epochs} epochs at most, the search's "
          "training split) before the search", flush=True)
    fold = run_training(cfg, store, extra_tags={"search": tcfg.name}).folds[0]
    if fold.checkpoint_path is None:
        raise RuntimeError(f"the RACNN pretraining {fold.run_name} left no checkpoint; see its Ray logs")
    # A fixed place per search: a re-run (its pretraining reported again from a
    # checkpoint Ray may have moved) gives the trials the same init, and so the
    # same search parameters in MLflow.
    folder = storage.join(storage.resolve(tcfg.storage_path), f"{tcfg.name}-racnn")
    weights = storage.join(folder, checkpoint.MODEL_FILE)
    if not storage.exists(weights):
        with storage.local_folder(fold.checkpoint_path) as trained:
            storage.upload_file(trained / checkpoint.MODEL_FILE, weights)
    print(f"RACNN pretrained ({fold.run_name}): speech-only val UA "
          f"{100 * fold.metrics.get('final_val_ua', float('nan')):.1f}%; every trial starts from it",
          flush=True)
    return f"checkpoint:{folder}"


def run_search(tcfg: TuneConfig, store: str | Path) -> SearchResult:
    # The trials keep their checkpoints under the search's storage_path.
    base = resolve_paths(configlib.load(TrainConfig, tcfg.train_config, [
        *tcfg.train_overrides, "stage=fusion", f"storage_path={storage.resolve(tcfg.storage_path)}"]))
    if tcfg.pretrain:
        base = replace(base, init=pretrained_init(tcfg, store))
    setup = store_setup(store, base.split.protocol, {"stage": FUSION.name, "search": tcfg.name})
    labels = setup.label_names
    split = make_splits(setup.meta, base.split)[base.fold or 0]
    parent_id = tracking.start_run(tcfg.experiment, run_key=tcfg.name, run_name=tcfg.name,
                                   tags=setup.tags)
    tracking.log_params(parent_id, {"tune": tcfg, "base": base})
    job = TuneJob(base=configlib.to_dict(base), datasets=datasets_for(store, setup.meta, split, base),
                  label_names=labels, name=tcfg.name,
                  storage_path=storage.join(storage.resolve(tcfg.storage_path), f"{tcfg.name}-trials"),
                  in_trial=tcfg.single_worker_in_trial,
                  tracking=runs.tracking_info(tcfg.experiment, setup, parent_run_id=parent_id,
                                              register=False, figures=False),
                  feature_cfg=setup.feature_cfg)
    tuner, restored = build_tuner(tcfg, job)
    if restored:
        print(f"resuming search {tcfg.name} from {tcfg.storage_path}")
    grid = tuner.fit()
    trials = trial_table(grid, list(tcfg.search_space))
    drop_forgotten_children(parent_id, set(trials["trial_id"].astype(str)))
    close_unfinished_children(parent_id)
    trial, study, per_trial, features = _klda_stage(tcfg, base, trials, labels)
    klda_cfg = configlib.from_dict(KLDAConfig, {**configlib.to_dict(base.klda), **study.best_params})
    params = {k: trial[k] for k in tcfg.search_space}
    head = fit_klda_head(features["train_hybrid"], features["train_labels"], klda_cfg, tcfg.seed)
    result = SearchResult(
        trials=trials, best_trial=str(trial["trial_id"]), network_val_ua=float(trial["val_ua"]),
        klda_val_ua=float(study.best_value), klda_params=dict(study.best_params),
        test_metrics=_test_metrics(trial, features, head, labels),
        klda_seconds_per_trial=per_trial, model_version=None, parent_run_id=parent_id,
        protocol=base.split.protocol, n_test=len(split.test),
    )
    _log_search(parent_id, trials, tcfg, {**params, **{f"klda.{k}": v for k, v in study.best_params.items()}})
    tracking.log_metrics(parent_id, {"best_network_val_ua": result.network_val_ua,
                                     "best_klda_val_ua": result.klda_val_ua,
                                     "klda_seconds_per_trial": per_trial, **result.test_metrics}, step=0)
    metrics = {"network_val_ua": result.network_val_ua, "klda_val_ua": result.klda_val_ua,
               **result.test_metrics}
    tags = {**setup.tags, **runs.speakers_tag(setup.meta, [*split.train, *split.val])}
    result.model_version = _register_best(tcfg, base, trial, params, klda_cfg, head, labels,
                                          parent_id, tags, metrics)
    tracking.finish_run(parent_id)
    return result
