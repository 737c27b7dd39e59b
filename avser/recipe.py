"""The training recipe: optimizer, learning-rate schedule, loss, weight EMA,
early stopping and numeric precision.

Pure PyTorch (no Ray): the per-worker loop of :mod:`avser.platform.train`
and the plain-loop recipe search of ``bench/speech_recipe.py`` build the
same recipe from one :class:`OptimConfig`. Every element can be switched
off, so each one can be ablated.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avser.errors import ConfigError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
EARLY_STOP_METRICS = ("val_loss", "val_ua")
PRECISIONS = ("auto", "bf16", "fp32")
# Measured on a 2-core AVX-512 BF16 CPU (BENCHMARKS.md): bf16 autocast trains
# the Table I RACNN at 112 and 224 inputs about 1.5x faster than fp32, while
# small networks (the tiny 64x64 model) run slower in it. ``auto`` uses bf16
# on such a CPU from this RACNN input size up.
CPU_BF16_MIN_INPUT = 112


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # adam (paper) | adamw (decoupled weight decay)
    lr: float = 1e-3  # paper
    weight_decay: float = 0.0
    batch_size: int = 10  # paper
    max_epochs: int = 100  # paper: up to 100
    # Learning rate per epoch: constant, or linear warm-up then cosine decay
    # to lr * min_lr_ratio at max_epochs.
    schedule: str = "constant"
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixup of RACNN inputs; 0 is off
    # Exponential moving average of the weights, evaluated and kept instead
    # of the raw weights; 0 is off.
    ema_decay: float = 0.0
    # Speaker-adversarial training (avser.models.adversary): the gradient
    # reversal's strength at full ramp; 0 is off. The network needs
    # racnn.adversary_speakers (set from the training split by the jobs).
    speaker_adversary: float = 0.0
    patience: int = 10  # early stopping: epochs without a better early_stop_metric
    early_stop_metric: str = "val_loss"  # val_loss (lower is better) | val_ua (higher)
    grad_clip: float = 5.0
    # Rows each worker shuffles per epoch (a row holds a clip's features). The
    # store's part files hold runs of one label; the split is shuffled once,
    # globally, and this buffer reorders each epoch: the shard size or more
    # gives a full reshuffle where memory allows.
    shuffle_buffer: int = 1024

    def __post_init__(self) -> None:
        _choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        _choice("optim.early_stop_metric", self.early_stop_metric, EARLY_STOP_METRICS)
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ConfigError(
                f"optim.lr ({self.lr}) must be > 0 and optim.batch_size ({self.batch_size}), "
                f".max_epochs ({self.max_epochs}) and .patience ({self.patience}) >= 1")
        if not 0 <= self.warmup_epochs < self.max_epochs:
            raise ConfigError(f"optim.warmup_epochs={self.warmup_epochs} must lie in "
                              f"[0, max_epochs={self.max_epochs})")
        if self.speaker_adversary < 0 or (self.speaker_adversary > 0 and self.mixup_alpha > 0):
            raise ConfigError(f"optim.speaker_adversary ({self.speaker_adversary}) must be >= 0, "
                              "and cannot be combined with optim.mixup_alpha (a mixed clip has "
                              "two speakers)")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.label_smoothing ({self.label_smoothing}) and "
                              f"optim.ema_decay ({self.ema_decay}) must lie in [0, 1)")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}; choose one of {list(choices)}")


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def learning_rate(cfg: OptimConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    decay_epochs = max(cfg.max_epochs - cfg.warmup_epochs - 1, 1)
    progress = min((epoch - cfg.warmup_epochs) / decay_epochs, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against soft ``targets`` (B, C) (one-hot or mixup), label-smoothed."""
    n_classes = logits.shape[-1]
    targets = targets * (1.0 - smoothing) + smoothing / n_classes
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class WeightEMA:
    """An exponential moving average of a model's floating-point state.

    Integer buffers (none in these networks, but counters in general) are
    copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                self.state[key].copy_(value)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.detach().clone() for k, v in state.items()}


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of the early-stopping ``metric`` beats ``best``."""
    if best is None or math.isnan(best):
        return True
    return value > best if metric == "val_ua" else value < best


def native_bf16_cpu() -> bool:
    """The CPU runs bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device, input_size: int = CPU_BF16_MIN_INPUT) -> str:
    """``auto`` -> bf16 on a GPU, or on a CPU with native bf16 for a RACNN
    input of at least ``CPU_BF16_MIN_INPUT``; else fp32."""
    _choice("mixed_precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if native_bf16_cpu() and input_size >= CPU_BF16_MIN_INPUT else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``bf16``; nothing for ``fp32``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
