"""Build the network of a training stage and run it on a batch.

``pretrain``: SpeechEmotionNet (RACNN + speech head) on speech alone.
``fusion``: AudioVisualSER, with the RACNN initialised from scratch, a
pretraining checkpoint folder, or a registered model (paper Table III).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from avser.errors import ConfigError
from avser.features.augment import SpeechAugmentConfig
from avser.features.config import RacnnInputConfig
from avser.models.config import ModelConfig
from avser.models.fusion import AudioVisualSER
from avser.models.racnn import SpeechEmotionNet

STAGES = ("pretrain", "fusion")
CHECKPOINT_MODEL_FILE = "model.pt"
# Shape of the example log-mel used for model signatures: (channels, mels, frames).
EXAMPLE_FRAMES = 100


def racnn_input_config(model_cfg: ModelConfig, overlap: float) -> RacnnInputConfig:
    """The input transform must produce exactly what the RACNN was sized for."""
    return RacnnInputConfig(segments=model_cfg.racnn.depth, size=model_cfg.racnn.input_size,
                            overlap=overlap)


def _pretrained_racnn_state(init: str) -> dict[str, torch.Tensor]:
    kind, _, where = init.partition(":")
    if kind == "checkpoint":
        path = Path(where)
        path = path / CHECKPOINT_MODEL_FILE if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"init={init!r}: no {CHECKPOINT_MODEL_FILE} at {path}; give the "
                              "checkpoint folder of a pretraining run (printed at its end)")
        return torch.load(path, map_location="cpu")
    if kind == "registry":
        from avser.platform.tracking import load_torch_model  # only when asked for

        name, _, alias = where.partition("@")
        return load_torch_model(f"models:/{name}@{alias or 'candidate'}").state_dict()
    raise ConfigError(f"init={init!r}: use scratch, checkpoint:PATH or registry:NAME@ALIAS")


def build_model(stage: str, model_cfg: ModelConfig, init: str = "scratch") -> nn.Module:
    if stage == "pretrain":
        return SpeechEmotionNet.from_config(model_cfg)
    if stage != "fusion":
        raise ConfigError(f"stage={stage!r}; choose one of {STAGES}")
    model = AudioVisualSER.from_config(model_cfg)
    if init != "scratch":
        model.load_racnn_state(_pretrained_racnn_state(init))
    return model


def forward_logits(model: nn.Module, stage: str, inputs, device: torch.device,
                   input_cfg: RacnnInputConfig, augment: SpeechAugmentConfig | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, hybrid features); a pretraining net has no hybrid feature, so
    an empty (B, 0) tensor stands in for it. ``augment``: training batches only."""
    if stage == "pretrain":
        return pretrain_logits(model, inputs.speech(device, input_cfg, augment, generator))
    # The vision-only variant reads no speech: skip building its (large) input.
    with_speech = getattr(model, "module", model).uses_speech  # DDP wraps the model
    return model(**inputs.model_kwargs(device, input_cfg, with_speech, augment, generator))


def pretrain_logits(model: nn.Module, speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A speech network's (logits, empty (B, 0) hybrid features) for a built input."""
    logits = model(speech)
    return logits, logits.new_zeros(logits.shape[0], 0)


def example_inputs(stage: str, model_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """A one-clip input example (for MLflow model signatures)."""
    racnn = model_cfg.racnn
    speech = np.zeros((1, racnn.in_channels, racnn.depth, racnn.input_size, racnn.input_size),
                      dtype=np.float32)
    if stage == "pretrain":
        return {"speech": speech}
    k, size = model_cfg.keyframes, model_cfg.appearance.image_size
    return {
        "speech": speech,
        "faces": np.zeros((1, k, 3, size, size), dtype=np.float32),
        "landmarks": np.zeros((1, k, 68, 2), dtype=np.float32),
        "visual_mask": np.ones((1,), dtype=bool),
    }
