"""Parameters and forward FLOPs per clip of each part of the model, measured.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one clip
(a multiply-add counts as 2 FLOPs; pooling, norms and activations count 0),
so the numbers follow the config rather than being typed in. The row
"racnn: Table I convs" holds Conv1-Conv7 alone, the figure to check against
Table I's arithmetic (about 0.46 G multiply-adds = 0.92 GFLOPs at paper size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avser.models.agru import N_LANDMARKS
from avser.models.config import ModelConfig
from avser.models.fusion import AudioVisualSER

GIGA = 1e9


@dataclass
class SummaryRow:
    module: str
    params: int
    gflops: float  # forward, one clip


def _example_clip(cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    r, a, k = cfg.racnn, cfg.appearance, cfg.keyframes
    speech = torch.zeros(1, r.in_channels, r.depth, r.input_size, r.input_size)
    faces = torch.zeros(1, k, 3, a.image_size, a.image_size)
    landmarks = torch.zeros(1, k, N_LANDMARKS, 2)
    return speech, faces, landmarks, torch.ones(1, dtype=torch.bool)


def _offline(cfg: ModelConfig) -> ModelConfig:
    """Same shapes, random weights: counting must never read or fetch weights."""
    appearance = dataclasses.replace(cfg.appearance, weights_file=None, allow_download=False)
    return dataclasses.replace(cfg, appearance=appearance)


def _count(model: nn.Module, clip: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Module path ('' for the model, 'racnn.ra1', ...) -> forward FLOPs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*clip)
    root = type(model).__name__
    flops = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            flops[key[len(root) + 1 :]] = float(sum(per_op.values()))
    return flops


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarize(cfg: ModelConfig) -> list[SummaryRow]:
    """Rows: the model's parts (RACNN's blocks indented), RACNN's Table I
    convolutions alone, and the total."""
    model = AudioVisualSER.from_config(_offline(cfg)).eval()
    flops = _count(model, _example_clip(cfg))
    rows = []
    for name, child in model.named_children():
        rows.append(SummaryRow(name, _params(child), flops.get(name, 0.0) / GIGA))
        if name == "racnn":
            rows += [
                SummaryRow(f"  racnn.{sub}", _params(m), flops.get(f"racnn.{sub}", 0.0) / GIGA)
                for sub, m in child.named_children()
                if _params(m) > 0
            ]
            rows.append(_table_i_convs(model, flops))
    rows.append(SummaryRow("total", _params(model), flops.get("", 0.0) / GIGA))
    return rows


def _table_i_convs(model: AudioVisualSER, flops: dict[str, float]) -> SummaryRow:
    names = {id(m): n for n, m in model.named_modules()}
    convs = [m for m in model.racnn.table_i_layers().values() if _params(m) > 0]
    total = sum(flops.get(names[id(m)], 0.0) for m in convs)
    return SummaryRow("racnn: Table I convs (Conv1-Conv7)", sum(map(_params, convs)), total / GIGA)


def format_summary(rows: list[SummaryRow]) -> str:
    """A markdown table of ``rows``."""
    width = max(len(r.module) for r in rows)
    lines = [
        f"| {'module':<{width}} | {'params':>11} | {'GFLOPs/clip':>11} |",
        f"|{'-' * (width + 2)}|{'-' * 12}:|{'-' * 12}:|",
    ]
    for r in rows:
        lines.append(f"| {r.module:<{width}} | {r.params:>11,} | {r.gflops:>11.4f} |")
    return "\n".join(lines)
