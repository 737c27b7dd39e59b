"""Typed configuration of the platform jobs: preprocessing, training, tuning."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from avser.data.splits import SplitConfig
from avser.features.augment import SpeechAugmentConfig
from avser.features.config import FeatureConfig, RacnnInputConfig
from avser.heads import KLDAConfig
from avser.errors import ConfigError
from avser.platform import storage
from avser.platform.epoch_log import OutageConfig
from avser.platform.stages import check_init, stage_of
from avser.recipe import PRECISIONS, OptimConfig
from avser.speaker_adapt import SpeakerReadoutConfig

__all__ = ["DataPrepConfig", "OptimConfig", "PreprocessConfig", "TrainConfig", "resolve_paths"]


@dataclass
class PreprocessConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # None -> as many actors as the cluster has CPUs / cpus_per_actor.
    num_actors: int | None = None
    cpus_per_actor: float = 1.0
    clips_per_batch: int = 4
    # Rows buffered on the driver before a part file is written (crash-safety grain).
    rows_per_part: int = 32

    def __post_init__(self) -> None:
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"num_actors={self.num_actors} must be >= 1 (or null for one per CPU)")
        if self.cpus_per_actor <= 0 or self.clips_per_batch < 1 or self.rows_per_part < 1:
            raise ConfigError(f"cpus_per_actor ({self.cpus_per_actor}) must be > 0 and "
                              f"clips_per_batch ({self.clips_per_batch}) and rows_per_part "
                              f"({self.rows_per_part}) >= 1")


@dataclass
class TrainConfig:
    stage: str = "fusion"  # pretrain (RACNN + speech head) | fusion (full model)
    model_config: str = "configs/model/tiny.yaml"
    model_overrides: list[str] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # On-the-fly augmentation of the speech input, training split only.
    augment: SpeechAugmentConfig = field(default_factory=SpeechAugmentConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # Overlap of the RACNN input segments; their count and size come from the model config.
    segment_overlap: float = RacnnInputConfig.overlap
    klda: KLDAConfig = field(default_factory=KLDAConfig)
    # Speech pretraining: the speaker-adaptive readout fitted after training.
    speaker_readout: SpeakerReadoutConfig = field(default_factory=SpeakerReadoutConfig)
    # RACNN initialisation for fusion: scratch | checkpoint:PATH | registry:NAME@ALIAS
    init: str = "scratch"
    num_workers: int = 1
    # Ray Data needs CPUs left over to read the store: keep
    # num_workers * cpus_per_worker below the cluster's CPU count.
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None  # None -> what Ray allots (cpus_per_worker)
    # CPUs each Ray Data read task of the feature store asks for: reading is
    # light, and a whole CPU per task could not be scheduled next to the workers.
    data_cpus: float = 0.25
    # Read the store into Ray's object store once, before the workers start:
    # epochs then cost no Parquet reads, and no read task has to wait for a CPU
    # the training workers hold. False streams from Parquet every epoch (corpora
    # larger than the object store). On a cluster of several nodes the
    # materialized blocks are copied to the driver's node, so that a node that
    # dies takes none with it (experiments.materialize_on_driver).
    materialize: bool = True
    use_gpu: bool = False
    # auto: bf16 autocast on a GPU or on a CPU with native bf16, else fp32 | bf16 | fp32
    mixed_precision: str = "auto"
    max_failures: int = 2
    # How training rides out an MLflow server outage (avser.platform.epoch_log).
    mlflow_outage: OutageConfig = field(default_factory=OutageConfig)
    seed: int = 0
    experiment: str = "avser"
    storage_path: str = "ray_results"
    run_name: str | None = None
    register_as: str | None = None  # registered model name; None -> by stage
    fold: int | None = None  # run a single fold of a k-fold protocol

    def __post_init__(self) -> None:
        # Checked here, on load, so that a typo fails before any data is read.
        stage_of(self.stage)
        check_init(self.init)
        if self.num_workers < 1 or self.cpus_per_worker <= 0:
            raise ConfigError(f"num_workers ({self.num_workers}) must be >= 1 and "
                              f"cpus_per_worker ({self.cpus_per_worker}) > 0")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}; choose one of "
                              f"{list(PRECISIONS)}")


@dataclass
class DataPrepConfig:
    """Where a job's data comes from; every step is skipped when already done.

    ``corpus: synthetic`` writes the synthetic corpus to ``root`` first when
    it is missing, so a job config alone is enough for ``ray job submit``.
    """

    corpus: str = "synthetic"
    root: str = "out/synthetic"
    synth_clips: int = 48
    synth_seed: int = 0
    # A SynthConfig YAML (e.g. configs/synthetic_demo.yaml); None: the generator's defaults.
    synth_config: str | None = None
    manifest: str = "out/synthetic.parquet"
    store: str = "out/store-synthetic"
    preprocess_config: str | None = "configs/preprocess_synthetic.yaml"


def _absolute(path: str) -> str:
    return path if storage.is_uri(path) else str(Path(path).resolve())


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Make relative paths absolute: Ray Train and Tune run the loop and the
    trial drivers in their own working directories."""
    init_kind, _, init_where = cfg.init.partition(":")
    return replace(
        cfg,
        model_config=_absolute(cfg.model_config),
        storage_path=storage.resolve(cfg.storage_path),
        init=f"checkpoint:{_absolute(init_where)}" if init_kind == "checkpoint" else cfg.init,
    )
