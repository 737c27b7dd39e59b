"""Build a network by kind and run it on a batch.

``speech``: SpeechEmotionNet (RACNN + speech head) on speech alone.
``audiovisual``: AudioVisualSER, the full model; its RACNN starts from
scratch or from given RACNN weights (paper Table III). Where weights come
from (a checkpoint, the registry) is the platform's business: this layer
takes a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from avser.errors import ConfigError
from avser.features.augment import SpeechAugmentConfig
from avser.features.config import RacnnInputConfig
from avser.models.config import ModelConfig
from avser.models.fusion import AudioVisualSER
from avser.models.racnn import SpeechEmotionNet

SPEECH = "speech"
AUDIOVISUAL = "audiovisual"
NETWORK_KINDS = (SPEECH, AUDIOVISUAL)


def racnn_input_config(model_cfg: ModelConfig, overlap: float) -> RacnnInputConfig:
    """The input transform must produce exactly what the RACNN was sized for."""
    return RacnnInputConfig(segments=model_cfg.racnn.depth, size=model_cfg.racnn.input_size,
                            overlap=overlap, trim_db=model_cfg.racnn.trim_db,
                            bin_mean=model_cfg.racnn.bin_mean)


def build_network(kind: str, model_cfg: ModelConfig,
                  racnn_state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The network of ``kind``; ``racnn_state`` initialises the fusion model's RACNN."""
    if kind == SPEECH:
        return SpeechEmotionNet.from_config(model_cfg)
    if kind != AUDIOVISUAL:
        raise ConfigError(f"network kind {kind!r}; choose one of {NETWORK_KINDS}")
    model = AudioVisualSER.from_config(model_cfg)
    if racnn_state is not None:
        model.load_racnn_state(racnn_state)
    return model


def network_logits(model: nn.Module, kind: str, inputs, device: torch.device,
                   input_cfg: RacnnInputConfig, augment: SpeechAugmentConfig | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, hybrid features); a speech network's are its embedding (what
    its head's FC reads). ``augment``: training batches only."""
    if kind == SPEECH:
        return speech_logits(model, inputs.speech(device, input_cfg, augment, generator))
    # The vision-only variant reads no speech: skip building its (large) input.
    with_speech = getattr(model, "module", model).uses_speech  # DDP wraps the model
    return model(**inputs.model_kwargs(device, input_cfg, with_speech, augment, generator))


def speech_logits(model: nn.Module, speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A speech network's (logits, embedding) for a built input."""
    return model(speech, with_embedding=True)


def example_inputs(kind: str, model_cfg: ModelConfig) -> dict[str, np.ndarray]:
    """A one-clip input example (for MLflow model signatures)."""
    racnn = model_cfg.racnn
    speech = np.zeros((1, racnn.in_channels, racnn.depth, racnn.input_size, racnn.input_size),
                      dtype=np.float32)
    if kind == SPEECH:
        return {"speech": speech}
    k, size = model_cfg.keyframes, model_cfg.appearance.image_size
    return {
        "speech": speech,
        "faces": np.zeros((1, k, 3, size, size), dtype=np.float32),
        "landmarks": np.zeros((1, k, 68, 2), dtype=np.float32),
        "visual_mask": np.ones((1,), dtype=bool),
    }
