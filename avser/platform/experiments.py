"""The training driver: feature store + protocol -> one Ray Train run per fold.

A protocol with several folds gets an MLflow parent run with a child run per
fold and mean ± std on the parent. Run names are derived from the config and
the data (no timestamps), so starting the same command again resumes an
interrupted run from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from avser import config as configlib
from avser.data import store as feature_store
from avser.data.splits import Split, make_splits
from avser.errors import AvserError, ConfigError
from avser.features.config import FeatureConfig
from avser.models.config import ModelConfig
from avser.platform import checkpoint, runs, storage, tracking
from avser.platform.epoch_log import mark_failed
from avser.platform.epochs import effective_config
from avser.platform.config import TrainConfig, resolve_paths
from avser.platform.runs import TrackingInfo
from avser.platform.stages import stage_of

META_COLUMNS = ["clip_id", "corpus", "speaker", "label", "label_name", "status", "source_key"]
SUMMARY_METRICS = ("test_wa", "test_ua", "test_f1", "klda_test_ua", "final_val_ua", "klda_val_ua")


@dataclass
class FoldResult:
    name: str
    run_name: str
    metrics: dict[str, float]
    checkpoint_path: str | None


@dataclass
class ExperimentResult:
    folds: list[FoldResult]
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std
    parent_run_id: str | None = None

    def table(self) -> str:
        keys = [k for k in SUMMARY_METRICS if any(k in f.metrics for f in self.folds)]
        lines = ["| fold | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for fold in self.folds:
            cells = [f"{100 * fold.metrics[k]:.2f}" if k in fold.metrics else "-" for k in keys]
            lines.append(f"| {fold.name} | " + " | ".join(cells) + " |")
        if len(self.folds) > 1:
            cells = [f"{100 * self.summary[k][0]:.2f} ± {100 * self.summary[k][1]:.2f}"
                     for k in keys if k in self.summary]
            lines.append("| mean ± std | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def load_store_meta(store: str | Path) -> pd.DataFrame:
    return feature_store.read_ok_rows(store, META_COLUMNS)


def label_names_of(meta: pd.DataFrame) -> list[str]:
    pairs = meta.drop_duplicates("label").sort_values("label")
    names = dict(zip(pairs["label"], pairs["label_name"]))
    return [names.get(i, f"label{i}") for i in range(int(meta["label"].max()) + 1)]


def model_config_for(cfg: TrainConfig, n_classes: int) -> ModelConfig:
    overrides = [*cfg.model_overrides, f"n_classes={n_classes}", f"racnn.n_classes={n_classes}"]
    return configlib.load_model_config(cfg.model_config, overrides)


def with_speaker_adversary(cfg: TrainConfig, model_cfg: ModelConfig,
                           n_speakers: int) -> ModelConfig:
    """``model_cfg`` with a speaker-adversarial head over the training split's
    ``n_speakers`` when the recipe asks for one (``optim.speaker_adversary``)."""
    if cfg.optim.speaker_adversary <= 0:
        return model_cfg
    if n_speakers < 2:
        raise ConfigError(f"optim.speaker_adversary needs at least 2 training speakers; the "
                          f"split has {n_speakers}: set optim.speaker_adversary=0")
    return dataclasses.replace(model_cfg, racnn=dataclasses.replace(
        model_cfg.racnn, adversary_speakers=n_speakers))


def _keep_live_rows(batch: pa.Table, keys: pa.Array) -> pa.Table:
    """The rows of ``batch`` whose ``part/clip_id`` is in ``keys``, without Ray's path column."""
    part = pc.replace_substring_regex(batch["path"], pattern=r"^.*/", replacement="")
    key = pc.binary_join_element_wise(part, batch["clip_id"], "/")
    return batch.filter(pc.is_in(key, value_set=keys)).drop_columns(["path"])


def _live_rows_of(store: str | Path, clip_ids: pd.Series) -> pd.DataFrame:
    """``clip_id``, ``part`` and ``key`` (``part/clip_id``) of the live row of each of ``clip_ids``."""
    live = feature_store.live_rows(store)
    live = live[live["clip_id"].isin(clip_ids)]
    if len(live) != clip_ids.nunique():
        raise AvserError(
            f"feature store {store} changed while it was being read (is jobs/preprocess.py "
            "writing it?); start the training again once preprocessing has finished"
        )
    return live.assign(key=live["part"] + "/" + live["clip_id"])


def datasets_for(store: str | Path, meta: pd.DataFrame, split: Split, cfg: TrainConfig) -> dict[str, Any]:
    """Ray datasets of one split, read lazily from the store's part files.

    Exactly the rows ``load_store_meta`` listed, once each: the raw parts may
    also hold superseded rows of recomputed clips (a run stopped before its
    compaction) and rows of clips the store's manifest no longer lists, so the
    read keeps a row only when its (part file name, clip id) is one of the
    store's live rows (``avser.data.store.live_rows``; a part holds a clip at
    most once). Ray Data's ``include_paths`` column says which part a row came from.
    """
    import ray.data

    live = _live_rows_of(store, meta["clip_id"])
    files = [str(Path(store) / name) for name in sorted(live["part"].unique())]
    columns = stage_of(cfg.stage).store_columns
    source = ray.data.read_parquet(files, include_paths=True, num_cpus=cfg.data_cpus)
    if columns:  # pushed down into the Parquet read by Ray Data's optimizer
        source = source.select_columns([*columns, "path"])
    datasets = {}
    for name, index in (("train", split.train), ("val", split.val), ("test", split.test)):
        if index is None or len(index) == 0:
            continue
        in_split = live["clip_id"].isin(meta["clip_id"].iloc[index])
        keys = pa.array(sorted(live.loc[in_split, "key"]), type=pa.string())
        subset = source.map_batches(_keep_live_rows, fn_kwargs={"keys": keys},
                                    batch_format="pyarrow", batch_size=None, num_cpus=cfg.data_cpus)
        if name == "train":
            # Part files hold runs of one label: mix them once, globally, so no
            # epoch depends on how blocks happen to interleave; each epoch then
            # reshuffles locally (optim.shuffle_buffer).
            subset = subset.random_shuffle(seed=cfg.seed)
        datasets[name] = materialize_on_driver(subset) if cfg.materialize else subset
    datasets["train_eval"] = datasets["train"]
    return datasets


def materialize_on_driver(dataset):
    """``dataset.materialize()``, its blocks held by this (the driver's) node.

    Ray Data leaves each block on the node whose task made it. When that node
    dies its blocks are lost, and the restored training waited for ever on
    their reconstruction (tests/test_two_nodes.py): on a cluster of several
    nodes the blocks are put again from here, so they live as long as the
    driver does."""
    import ray

    from avser.platform.cluster import alive_nodes

    done = dataset.materialize()
    if alive_nodes() <= 1:
        return done
    return ray.data.from_arrow(ray.get(done.to_arrow_refs()))


def run_name_for(cfg: TrainConfig, model_cfg: ModelConfig, split_name: str, corpus: str,
                 dhash: str) -> str:
    if cfg.run_name:
        return f"{cfg.run_name}-{split_name}"
    digest = configlib.config_hash({"train": configlib.to_dict(cfg),
                                    "model": configlib.to_dict(model_cfg), "data": dhash})
    return f"{cfg.stage}-{corpus}-{cfg.split.protocol}-{split_name}-{digest[:8]}"


def loop_config_for(cfg: TrainConfig, model_cfg: ModelConfig, label_names: list[str], run_name: str,
                    tracking_info: TrackingInfo, feature_cfg: FeatureConfig | None = None
                    ) -> dict[str, Any]:
    """Plain values for the workers (``LoopContext.from_loop_config`` types
    them again); ``feature_cfg``: the store's, what a model bundle must reproduce."""
    return {
        "train": configlib.to_dict(cfg),
        "model": configlib.to_dict(model_cfg),
        "features": configlib.to_dict(feature_cfg or FeatureConfig()),
        "label_names": label_names,
        "run_name": run_name,
        "tracking": configlib.to_dict(tracking_info),
    }


def _summarize(folds: list[FoldResult]) -> dict[str, tuple[float, float]]:
    summary = {}
    for key in SUMMARY_METRICS:
        values = [f.metrics[key] for f in folds if key in f.metrics]
        if values:
            summary[key] = (float(np.mean(values)), float(np.std(values)))
    return summary


def _parent_run(cfg: TrainConfig, splits: list[Split], tags: dict[str, str], key: str) -> str | None:
    if len(splits) < 2:
        return None
    run_id = tracking.start_run(cfg.experiment, run_key=key, run_name=key, tags=tags)
    tracking.log_params(run_id, {"train": cfg})
    return run_id


def run_training(cfg: TrainConfig, store: str | Path, extra_tags: dict[str, str] | None = None,
                 shard_log_dir: str | None = None) -> ExperimentResult:
    cfg = resolve_paths(cfg)
    setup = store_setup(store, cfg.split.protocol, {"stage": cfg.stage, **(extra_tags or {})})
    model_cfg = model_config_for(cfg, len(setup.label_names))
    splits = make_splits(setup.meta, cfg.split)
    if cfg.fold is not None:
        splits = [splits[cfg.fold]]
    parent_key = run_name_for(cfg, model_cfg, "cv", setup.corpus, setup.data_hash)
    parent_id = _parent_run(cfg, splits, setup.tags, parent_key)
    info = runs.tracking_info(cfg.experiment, setup, parent_run_id=parent_id, register=True,
                              shard_log_dir=shard_log_dir)
    folds = [_run_fold(cfg, model_cfg, store, setup, split,
                       info.with_tags(split=split.name, **runs.speakers_tag(
                           setup.meta, [*split.train, *split.val])))
             for split in splits]
    result = ExperimentResult(folds=folds, summary=_summarize(folds), parent_run_id=parent_id)
    if parent_id:
        tracking.log_metrics(parent_id, {f"{k}_mean": v[0] for k, v in result.summary.items()} |
                             {f"{k}_std": v[1] for k, v in result.summary.items()}, step=0)
        tracking.finish_run(parent_id)
    return result


def store_setup(store: str | Path, protocol: str, extra_tags: dict[str, Any]) -> runs.RunSetup:
    """The run set-up every driver (training, search) starts from."""
    meta = load_store_meta(store)
    return runs.set_up(meta, label_names_of(meta), protocol, extra_tags,
                       feature_store.load_feature_config(store))


@contextmanager
def failed_run_marked(experiment: str, run_name: str, cfg: TrainConfig) -> Iterator[None]:
    """A training that gives up (its retries spent) leaves its MLflow run
    FAILED, not RUNNING: the worker that died could not say so."""
    try:
        yield
    except Exception:
        mark_failed(experiment, run_name, cfg.mlflow_outage)
        raise


def _run_fold(cfg, model_cfg, store, setup: runs.RunSetup, split: Split,
              info: TrackingInfo) -> FoldResult:
    from avser.platform.trainer import trainer_for  # imports ray.train

    speakers = sorted(map(str, setup.meta["speaker"].iloc[list(split.train)].unique()))
    model_cfg = with_speaker_adversary(cfg, model_cfg, len(speakers))
    run_name = run_name_for(cfg, model_cfg, split.name, setup.corpus, setup.data_hash)
    checkpoint.check_resume_of_run(cfg.storage_path, run_name, effective_config(cfg, model_cfg))
    loop_config = loop_config_for(cfg, model_cfg, setup.label_names, run_name, info,
                                  setup.feature_cfg)
    loop_config["train_speakers"] = speakers  # the speaker adversary's classes, in order
    trainer = trainer_for(loop_config, datasets_for(store, setup.meta, split, cfg), cfg, run_name)
    with failed_run_marked(info.experiment, run_name, cfg):
        result = trainer.fit()
    final = storage.checkpoint_uri(result.checkpoint) if result.checkpoint else None
    return FoldResult(split.name, run_name, dict(result.metrics or {}), final)
