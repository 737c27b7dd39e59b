"""The model bundle: a trained network as one file of plain values.

One ``torch.save`` file holds the state dict, the model config, the audio
feature config and RACNN input settings the network was trained with, the
label names, a model card and, when fitted, the speaker-adaptive readout
(:mod:`avser.speaker_adapt`); no pickled classes. A speech bundle may hold
an ensemble of ``members`` networks of one architecture
(:mod:`avser.models.ensemble`), read as one network. :func:`load_bundle`
reads it with ``weights_only=True``, so loading runs no code. The shipped
speech model (``avser/pretrained``) is such a file; a training run writes
one into its final checkpoint and registers it with its model version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avser import config as configlib
from avser.errors import AvserError
from avser.features.config import AudioConfig, FeatureConfig, RacnnInputConfig
from avser.models.config import ModelConfig
from avser.models.ensemble import SpeechEnsemble
from avser.models.factory import NETWORK_KINDS, SPEECH, build_network, racnn_input_config

BUNDLE_FORMAT = "avser-bundle/1"
# The artifact a registered model keeps its bundle under (registry and pyfunc).
BUNDLE_ARTIFACT = "bundle"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_WEIGHTS = PRETRAINED_DIR / "racnn-ravdess-a01-16.pt"


@dataclass
class ModelBundle:
    """A trained network with what it needs to read new files."""

    kind: str  # speech (RACNN + speech head) | audiovisual (the fusion model)
    model_cfg: ModelConfig
    feature_cfg: FeatureConfig  # the training store's: how to read a new file
    segment_overlap: float
    label_names: list[str]
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any]
    # The speaker-adaptive readout of a speech network (avser.speaker_adapt), if fitted.
    speaker_readout: dict[str, torch.Tensor] | None = None
    members: int = 1  # > 1: a SpeechEnsemble of that many networks (state dict members.<i>.*)

    @property
    def audio_cfg(self) -> AudioConfig:
        return self.feature_cfg.audio

    @property
    def input_cfg(self) -> RacnnInputConfig:
        return racnn_input_config(self.model_cfg, self.segment_overlap)

    def network(self) -> torch.nn.Module:
        nets = [build_network(self.kind, self.model_cfg) for _ in range(self.members)]
        net = SpeechEnsemble(nets) if self.members > 1 else nets[0]
        net.load_state_dict(self.state_dict)
        return net.eval()


def float16_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as float16 (half the file), others as they are;
    ``ModelBundle.network`` loads them back into its float32 parameters."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": BUNDLE_FORMAT,
        "kind": bundle.kind,
        "model_config": configlib.to_dict(bundle.model_cfg),
        "feature_config": configlib.to_dict(bundle.feature_cfg),
        "segment_overlap": float(bundle.segment_overlap),
        "label_names": list(bundle.label_names),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in bundle.state_dict.items()},
        "card": bundle.card,
        **({"speaker_readout": bundle.speaker_readout} if bundle.speaker_readout else {}),
        **({"members": bundle.members} if bundle.members > 1 else {}),
    }, path)
    return path


def load_bundle(path: str | Path) -> ModelBundle:
    """Read a bundle without running code; errors name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise AvserError(f"no model file at {path}; give --weights a bundle written by avser "
                         f"(the shipped one is {DEFAULT_WEIGHTS})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends, by torch version
        raise AvserError(f"{path} is not a plain-data avser bundle ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}); avser loads no pickled code. Re-export "
                         "the model with avser.predict.save_bundle") from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise AvserError(f"{path} is not an {BUNDLE_FORMAT} file (a bare state dict or an older "
                         "format?); re-export it with avser.predict.save_bundle")
    if raw["kind"] not in NETWORK_KINDS:
        raise AvserError(f"{path}: unknown model kind {raw['kind']!r}")
    members = raw.get("members", 1)
    if not isinstance(members, int) or members < 1 or (members > 1 and raw["kind"] != SPEECH):
        raise AvserError(f"{path}: members={members!r}; an ensemble is a positive number of "
                         f"{SPEECH} networks. Re-export it with bench/export_speech_model.py")
    return ModelBundle(
        kind=raw["kind"],
        model_cfg=configlib.from_dict(ModelConfig, raw["model_config"], f"{path}:model_config"),
        feature_cfg=_feature_config(raw, path),
        segment_overlap=float(raw["segment_overlap"]),
        label_names=list(raw["label_names"]),
        state_dict=raw["state_dict"],
        card=dict(raw.get("card") or {}),
        speaker_readout=raw.get("speaker_readout"),
        members=members,
    )


def _feature_config(raw: dict[str, Any], path: Path) -> FeatureConfig:
    """Bundles written before the full feature config travelled carry the audio part only
    (the shipped speech model): the rest is never read for a speech model."""
    if "feature_config" in raw:
        return configlib.from_dict(FeatureConfig, raw["feature_config"], f"{path}:feature_config")
    return FeatureConfig(audio=configlib.from_dict(AudioConfig, raw["audio_config"],
                                                   f"{path}:audio_config"))
