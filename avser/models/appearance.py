"""Static appearance features: a timm CNN (EfficientNet-B0 in the paper, its
classifier removed, global average pool) over the K keyframe face crops.

Weights are never fetched unless the config says ``allow_download``: they come
from ``weights_file`` when given, else the network starts from random weights
and says so in ``weights_source`` (runs log it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avser.errors import ConfigError
from avser.models.compat import import_timm
from avser.models.config import AppearanceConfig


def create_backbone(
    model_name: str, weights_file: str | None = None, allow_download: bool = False
) -> tuple[nn.Module, str]:
    """timm model without classifier (``num_classes=0``) and where its weights came from."""
    timm = import_timm()
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"appearance.weights_file {path} does not exist; give a local timm "
                f"checkpoint of {model_name} or set it to null for random weights"
            )
        overlay = dict(file=str(path))
        model = timm.create_model(
            model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
        )
        return model, f"file:{path}"
    if allow_download:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
        return model, f"download:{model_name}"
    return timm.create_model(model_name, pretrained=False, num_classes=0), "random"


class AppearanceCNN(nn.Module):
    """(B, K, 3, S, S) face crops -> (B, K, feature_dim).

    Crops arrive normalised with the backbone's ``pretrained_cfg`` mean/std
    (ImageNet for the paper's EfficientNet; ``avser.batches.face_tensor`` does
    it), so pretrained weights see the inputs they were trained on.
    A frozen backbone stays in eval mode so its BatchNorm statistics do not drift.
    """

    def __init__(
        self,
        model_name: str = "efficientnet_b0",
        weights_file: str | None = None,
        allow_download: bool = False,
        freeze: bool = False,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.weights_source = create_backbone(
            model_name, weights_file, allow_download
        )
        self.out_features = self.backbone.num_features
        if feature_dim is not None and feature_dim != self.out_features:
            raise ConfigError(
                f"appearance.feature_dim={feature_dim} but {model_name} gives "
                f"{self.out_features} features; fix feature_dim or set it to null"
            )
        self.frozen = freeze
        if freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def from_config(cls, cfg: AppearanceConfig) -> AppearanceCNN:
        return cls(
            cfg.model_name, cfg.weights_file, cfg.allow_download, cfg.freeze, cfg.feature_dim
        )

    def train(self, mode: bool = True) -> AppearanceCNN:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        batch, keyframes = faces.shape[:2]
        return self.backbone(faces.flatten(0, 1)).view(batch, keyframes, self.out_features)
