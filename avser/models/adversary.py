"""Speaker-adversarial training (domain-adversarial, Ganin & Lempitsky 2015):
a speaker classifier reads the speech embedding through a gradient reversal
layer. The classifier learns to tell the training speakers apart; the
reversed gradient pushes the RACNN towards embeddings that cannot, so what is
constant within a speaker (the largest gap between `random` and `speaker`
in BENCHMARKS.md) weighs less in the emotion head.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``-scale`` backward."""
    return _ReverseGradient.apply(x, scale)


def adversary_scale(weight: float, progress: float) -> float:
    """DANN's ramp: 0 at the start of training, ``weight`` towards the end
    (``2 / (1 + exp(-10 p)) - 1`` of it), so the adversary reads a useful
    embedding before its reversed gradient counts."""
    return weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class SpeakerAdversary(nn.Module):
    """embedding -> reversed gradient -> MLP -> logits over the training speakers."""

    def __init__(self, embed_dim: int, n_speakers: int, hidden: int) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_speakers)
        )

    def forward(self, embedding: torch.Tensor, scale: float) -> torch.Tensor:
        return self.classifier(reverse_gradient(embedding, scale))
