"""The training stages, as a small typed registry.

Every place that used to branch on the ``stage`` string asks the stage
instead: which network it trains, whether it reads faces, which store
columns it needs, what it registers as, whether a KLDA head follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avser.errors import ConfigError
from avser.models.config import ModelConfig
from avser.models.factory import AUDIOVISUAL, SPEECH, build_network
from avser.platform import checkpoint

# Store columns a speech-only stage reads (no JPEGs, no landmarks).
SPEECH_COLUMNS = ["clip_id", "label", "logmel", "logmel_shape", "speaker"]


@dataclass(frozen=True)
class Stage:
    name: str
    network: str  # avser.models.factory network kind
    registered_name: str  # MLflow registered model
    with_visual: bool  # reads faces and landmarks
    fits_klda: bool  # a KLDA head is fitted on its hybrid features

    def n_classes(self, model_cfg: ModelConfig) -> int:
        return model_cfg.racnn.n_classes if self.network == SPEECH else model_cfg.n_classes

    @property
    def store_columns(self) -> list[str] | None:
        """Columns to read from the store (None: all)."""
        return None if self.with_visual else list(SPEECH_COLUMNS)


PRETRAIN = Stage("pretrain", SPEECH, "avser-racnn", with_visual=False, fits_klda=False)
FUSION = Stage("fusion", AUDIOVISUAL, "avser", with_visual=True, fits_klda=True)
STAGES = {stage.name: stage for stage in (PRETRAIN, FUSION)}
INIT_KINDS = ("scratch", "checkpoint", "registry")


def stage_of(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage={name!r}; choose one of {sorted(STAGES)}")
    return STAGES[name]


def check_init(init: str) -> None:
    kind, _, where = init.partition(":")
    if kind not in INIT_KINDS or (kind == "scratch") == bool(where):
        raise ConfigError(f"init={init!r}: use scratch, checkpoint:PATH or registry:NAME@ALIAS")


def pretrained_racnn_state(init: str) -> dict[str, torch.Tensor] | None:
    """The RACNN weights ``init`` names: a pretraining checkpoint folder (or
    its model file) or a registered version; None for ``scratch``."""
    check_init(init)
    kind, _, where = init.partition(":")
    if kind == "scratch":
        return None
    if kind == "checkpoint":
        return checkpoint.load_model_state(where)
    from avser.platform import registry  # MLflow only when asked for

    name, _, alias = where.partition("@")
    return registry.load_registered_state(name, alias or "candidate")


def build_stage_model(stage: str | Stage, model_cfg: ModelConfig, init: str = "scratch") -> nn.Module:
    """The network a stage trains, its RACNN initialised as ``init`` says."""
    stage = stage if isinstance(stage, Stage) else stage_of(stage)
    state = pretrained_racnn_state(init) if stage.network == AUDIOVISUAL else None
    return build_network(stage.network, model_cfg, state)
