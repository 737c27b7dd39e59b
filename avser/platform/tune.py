"""Ray Tune + Optuna: the two-stage search of the audio-visual model.

Stage 1 (network): every trial trains the network, in the trial itself when
it has one worker, or as a Ray Train run launched by ``trial_driver`` (Ray's
Train-inside-Tune pattern) when it has more; OptunaSearch (TPE,
seeded) proposes learning rate, fusion weight, GRU size and dropout, ASHA
stops weak trials early on validation UA.

Stage 2 (kernel LDA): for each finished trial, the cached hybrid features of
its training and validation clips are re-used to search the KLDA width and
regularisation with Optuna directly; each KLDA trial costs milliseconds
instead of a training run. The best (trial, gamma) pair is the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from avser import config as configlib
from avser.errors import ConfigError
from avser.heads import KLDAConfig
from avser.features.config import FeatureConfig
from avser.platform import storage
from avser.platform.config import DataPrepConfig, TrainConfig
from avser.platform.runs import TrackingInfo

PARAM_TYPES = ("loguniform", "uniform", "choice", "randint")
MODEL_PREFIX = "model."
KLDA_PREFIX = "klda."


@dataclass
class ParamSpec:
    type: str
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ConfigError(f"search space type {self.type!r}; choose one of {PARAM_TYPES}")
        if self.type == "choice" and not self.values:
            raise ConfigError("a choice parameter needs a non-empty 'values' list")
        if self.type != "choice" and (self.low is None or self.high is None):
            raise ConfigError(f"a {self.type} parameter needs 'low' and 'high'")


@dataclass
class SchedulerConfig:
    grace_period: int = 2  # epochs before ASHA may stop a trial
    reduction_factor: float = 2.0


@dataclass
class KLDASearchConfig:
    n_trials: int = 40
    top_trials: int = 3  # finished network trials whose features are searched
    space: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "gamma": {"type": "loguniform", "low": 1e-4, "high": 1.0},
        "reg": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    })


@dataclass
class TuneConfig:
    data: DataPrepConfig = field(default_factory=DataPrepConfig)
    train_config: str = "configs/train_fusion.yaml"
    train_overrides: list[str] = field(default_factory=list)
    name: str = "tune-fusion"  # Tune run name = resume key; MLflow parent run key
    experiment: str = "avser-tune"  # MLflow experiment
    num_samples: int = 8
    max_concurrent_trials: int = 1
    seed: int = 0
    metric: str = "val_ua"
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    klda_search: KLDASearchConfig = field(default_factory=KLDASearchConfig)
    max_failures: int = 1  # per trial, Tune level (Train level: the train config's)
    storage_path: str = "ray_results"
    # The trial driver only waits on its TorchTrainer; Tune refuses 0, so a sliver.
    driver_cpus: float = 0.01
    register_as: str = "avser"
    # The paper's Table III: before the search, pretrain the RACNN (speech
    # only, stage=pretrain) on the search's own training split, and start
    # every trial's RACNN from it. ``pretrain_overrides`` apply to the
    # train config (and its train_overrides) for that pretraining only.
    pretrain: bool = False
    pretrain_overrides: list[str] = field(default_factory=list)
    # A one-worker trial trains inside the Tune trial (no Train controller or
    # worker group to start); false gives it a Ray Train run as well.
    single_worker_in_trial: bool = True

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_concurrent_trials < 1 or self.max_failures < 0:
            raise ConfigError(f"num_samples ({self.num_samples}) and max_concurrent_trials "
                              f"({self.max_concurrent_trials}) must be >= 1 and max_failures "
                              f"({self.max_failures}) >= 0")
        parse_space(self.search_space)  # each parameter checked on load


def parse_space(space: dict[str, dict[str, Any]]) -> dict[str, ParamSpec]:
    return {name: configlib.from_dict(ParamSpec, spec, f"search_space.{name}")
            for name, spec in space.items()}


def tune_domain(spec: ParamSpec):
    from ray import tune

    if spec.type == "loguniform":
        return tune.loguniform(spec.low, spec.high)
    if spec.type == "uniform":
        return tune.uniform(spec.low, spec.high)
    if spec.type == "randint":
        return tune.randint(int(spec.low), int(spec.high) + 1)
    return tune.choice(spec.values)


def suggest(trial, name: str, spec: ParamSpec):
    """The same search space, for a plain Optuna trial (the KLDA stage)."""
    if spec.type == "choice":
        return trial.suggest_categorical(name, spec.values)
    if spec.type == "randint":
        return trial.suggest_int(name, int(spec.low), int(spec.high))
    return trial.suggest_float(name, spec.low, spec.high, log=spec.type == "loguniform")


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """Trial parameters (dotted keys) -> a TrainConfig; ``model.*`` keys become
    model overrides."""
    data = configlib.to_dict(base)
    model_overrides = list(data.get("model_overrides") or [])
    for key, value in params.items():
        if key.startswith(MODEL_PREFIX):
            model_overrides.append(f"{key[len(MODEL_PREFIX):]}={value!r}")
        else:
            configlib.set_value(data, key, value)  # typed on from_dict, never via a string
    data["model_overrides"] = model_overrides
    return configlib.from_dict(TrainConfig, data)


# ------------------------------------------------------------ stage 1: trials


@dataclass
class TuneJob:
    """What every trial needs, shipped once through the object store.

    The datasets are read and materialized by the search driver: a trial
    driver runs inside Tune's placement group of a sliver of CPU, where Ray
    Data read tasks could never be scheduled.
    """

    base: dict[str, Any]  # TrainConfig as a dict
    datasets: dict[str, Any]  # name -> materialized ray.data.Dataset
    label_names: list[str]
    tracking: TrackingInfo
    name: str
    storage_path: str  # where each trial's Ray Train run keeps its checkpoints
    in_trial: bool = True  # TuneConfig.single_worker_in_trial
    feature_cfg: FeatureConfig = field(default_factory=FeatureConfig)  # the store's


def trial_driver(params: dict[str, Any], job: TuneJob) -> None:
    """One Tune trial. With one worker the per-worker loop runs right here,
    reporting to Tune; with more, the trial drives a Ray Train run named
    after the trial id (no timestamps), so a restored trial resumes its own
    checkpoints either way."""
    import ray.tune

    from avser.platform.experiments import loop_config_for, model_config_for

    cfg = apply_params(configlib.from_dict(TrainConfig, job.base), params)
    cfg = replace(cfg, storage_path=job.storage_path)
    model_cfg = model_config_for(cfg, len(job.label_names))
    trial_id = ray.tune.get_context().get_trial_id()
    run_name = f"{job.name}-{trial_id}"
    loop_config = loop_config_for(cfg, model_cfg, job.label_names, run_name,
                                  job.tracking.with_tags(trial_id=trial_id), job.feature_cfg)
    train_trial(loop_config, cfg, job.datasets, job.in_trial, run_name)


def train_trial(loop_config: dict[str, Any], cfg: TrainConfig, datasets: dict[str, Any],
                in_trial: bool, run_name: str) -> None:
    """Train one run inside the current Tune trial: the per-worker loop right
    here, or (more than one worker, or ``in_trial`` false) a Ray Train run
    named ``run_name`` whose results are reported on to Tune."""
    from avser.platform.epochs import LoopContext
    from avser.platform.experiments import failed_run_marked

    ctx = LoopContext.from_loop_config(loop_config)
    with failed_run_marked(ctx.tracking.experiment, run_name, cfg):
        if trains_in_trial(cfg, in_trial):
            from avser.platform.session import TuneTrialSession
            from avser.platform.train import run_loop

            run_loop(ctx, TuneTrialSession(datasets, cfg.use_gpu))
            return
        from ray.tune.integration.ray_train import TuneReportCallback

        from avser.platform.trainer import trainer_for

        trainer_for(loop_config, datasets, cfg, run_name, callbacks=[TuneReportCallback()]).fit()


def trains_in_trial(cfg: TrainConfig, in_trial: bool) -> bool:
    return in_trial and cfg.num_workers == 1


def trial_resources(base: TrainConfig, in_trial: bool = True,
                    driver_cpus: float = TuneConfig.driver_cpus) -> dict[str, float]:
    """A trial that trains in its own process needs the worker's CPUs (and
    GPU); a Train-inside-Tune trial only waits on its workers."""
    if not trains_in_trial(base, in_trial):
        return {"CPU": driver_cpus}
    return {"CPU": base.cpus_per_worker, **({"GPU": 1} if base.use_gpu else {})}


def build_tuner(tcfg: TuneConfig, job: TuneJob):
    """A new Tuner, or the interrupted one restored (same storage path + name)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from avser.platform.console import TrialTable

    base = configlib.from_dict(TrainConfig, job.base)
    trainable = tune.with_resources(tune.with_parameters(trial_driver, job=job),
                                    trial_resources(base, tcfg.single_worker_in_trial,
                                                    tcfg.driver_cpus))
    storage_path = storage.resolve(tcfg.storage_path)
    path = storage.join(storage_path, tcfg.name)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True), True
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study it creates
    searcher = OptunaSearch(seed=tcfg.seed)
    # Reports = epochs + one final report; max_t beyond that, so ASHA never
    # stops a trial that is finishing on its own.
    scheduler = ASHAScheduler(max_t=base.optim.max_epochs + 2, grace_period=tcfg.scheduler.grace_period,
                              reduction_factor=tcfg.scheduler.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={k: tune_domain(s) for k, s in parse_space(tcfg.search_space).items()},
        tune_config=tune.TuneConfig(metric=tcfg.metric, mode="max", search_alg=searcher,
                                    scheduler=scheduler, num_samples=tcfg.num_samples,
                                    max_concurrent_trials=tcfg.max_concurrent_trials,
                                    # A trial that trains itself starts torch, MLflow and
                                    # avser in its process: the next trial reuses them.
                                    reuse_actors=trains_in_trial(base, tcfg.single_worker_in_trial)),
        run_config=tune.RunConfig(name=tcfg.name, storage_path=storage_path,
                                  failure_config=tune.FailureConfig(max_failures=tcfg.max_failures),
                                  # Our one line per trial instead of Tune's status boxes.
                                  verbose=0, callbacks=[TrialTable(metric=tcfg.metric)],
                                  # Trials that train themselves checkpoint through Tune.
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner, False




# ------------------------------------------------------------ stage 2: KLDA


@dataclass
class KLDAResult:
    trial_id: str
    params: dict[str, float]
    val_ua: float
    network_val_ua: float
    seconds_per_trial: float
    study: Any = None


def search_klda(features: dict[str, np.ndarray], base: KLDAConfig, search: KLDASearchConfig,
                seed: int, label_names: list[str]):
    """Optuna TPE over the KLDA head's parameters on cached hybrid features:
    fit on train, score UA on validation (never on test)."""
    import optuna

    from avser.heads import evaluate_head, fit_klda_head

    space = parse_space(search.space)

    def objective(trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in space.items()}
        cfg = configlib.from_dict(KLDAConfig, {**configlib.to_dict(base), **values})
        head = fit_klda_head(features["train_hybrid"], features["train_labels"], cfg, seed)
        return evaluate_head(head, features["val_hybrid"], features["val_labels"], label_names)["ua"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    start = time.perf_counter()
    study.optimize(objective, n_trials=search.n_trials)
    return study, (time.perf_counter() - start) / max(search.n_trials, 1)
