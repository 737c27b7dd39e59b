"""The training recipe (avser.recipe): schedule, loss, EMA, early stopping, precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avser import recipe
from avser.errors import ConfigError
from avser.recipe import OptimConfig


def test_constant_schedule_is_the_learning_rate() -> None:
    cfg = OptimConfig(lr=3e-4)
    assert {recipe.learning_rate(cfg, e) for e in range(10)} == {3e-4}


def test_warmup_rises_then_cosine_falls_to_the_floor() -> None:
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_epochs=4, max_epochs=20, min_lr_ratio=0.1)
    rates = [recipe.learning_rate(cfg, e) for e in range(20)]
    assert rates[:5] == sorted(rates[:5]) and rates[0] < 1e-3
    assert rates[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] == pytest.approx(1e-4)


def test_the_schedule_sets_the_optimizer() -> None:
    model = nn.Linear(2, 2)
    opt = recipe.make_optimizer(model, OptimConfig(optimizer="adamw", weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    recipe.set_learning_rate(opt, 1e-5)
    assert opt.param_groups[0]["lr"] == 1e-5


def test_soft_cross_entropy_is_cross_entropy_on_one_hot_targets() -> None:
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    onehot = F.one_hot(labels, 4).float()
    assert recipe.soft_cross_entropy(logits, onehot, 0.0) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert recipe.soft_cross_entropy(logits, onehot, 0.1) == pytest.approx(
        float(F.cross_entropy(logits, labels, label_smoothing=0.1)), rel=1e-5)


def test_weight_ema_moves_towards_the_weights() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = recipe.WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert float(ema.state["weight"]) == pytest.approx(0.75)


def test_early_stopping_direction_follows_the_metric() -> None:
    assert recipe.is_better("val_loss", 0.5, 0.6) and not recipe.is_better("val_loss", 0.7, 0.6)
    assert recipe.is_better("val_ua", 0.7, 0.6) and not recipe.is_better("val_ua", 0.5, 0.6)
    assert recipe.is_better("val_ua", 0.1, None)


def test_precision_resolution() -> None:
    cpu = torch.device("cpu")
    assert recipe.resolve_precision("fp32", cpu) == "fp32"
    assert recipe.resolve_precision("bf16", cpu) == "bf16"
    expected = "bf16" if recipe.native_bf16_cpu() else "fp32"
    assert recipe.resolve_precision("auto", cpu, input_size=224) == expected
    assert recipe.resolve_precision("auto", cpu, input_size=64) == "fp32"  # small nets lose
    assert recipe.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ConfigError, match="mixed_precision"):
        recipe.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("bad", [dict(optimizer="sgd"), dict(schedule="step"), dict(lr=0),
                                 dict(early_stop_metric="val_wa"), dict(warmup_epochs=100),
                                 dict(label_smoothing=1.0)])
def test_bad_optim_values_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError, match="optim"):
        OptimConfig(**bad)
