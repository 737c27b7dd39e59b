"""One epoch of training, and scoring a dataset: the parts of the training
loop that need no Ray. The Ray Train worker (:mod:`avser.platform.train`)
and the plain-process recipe search (``bench/speech_recipe.py``) run the
same functions; a ``shard`` is anything with Ray's ``iter_batches``
(a ``ray.data.DataIterator``, or :class:`avser.batches.FrameBatches`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avser import config as configlib
from avser import recipe
from avser.batches import collate
from avser.features.augment import mixup
from avser.models.adversary import adversary_scale
from avser.features.config import FeatureConfig, RacnnInputConfig
from avser.metrics import classification_report
from avser.models.config import ModelConfig
from avser.models.factory import SPEECH, network_logits, racnn_input_config, speech_logits
from avser.platform import storage
from avser.platform.checkpoint import LoopState
from avser.platform.config import TrainConfig
from avser.platform.runs import TrackingInfo
from avser.platform.stages import Stage, stage_of


@dataclass
class LoopContext:
    """Everything the per-worker loop needs, rebuilt from the loop config dict."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    label_names: list[str]
    run_name: str
    tracking: TrackingInfo
    feature_cfg: FeatureConfig = field(default_factory=FeatureConfig)  # the store's
    # The training split's speakers, in the speaker adversary's class order.
    train_speakers: list[str] = field(default_factory=list)

    @classmethod
    def from_loop_config(cls, loop_config: dict[str, Any]) -> "LoopContext":
        return cls(
            cfg=configlib.from_dict(TrainConfig, loop_config["train"]),
            model_cfg=configlib.from_dict(ModelConfig, loop_config["model"]),
            label_names=list(loop_config["label_names"]),
            run_name=loop_config["run_name"],
            tracking=configlib.from_dict(TrackingInfo, loop_config["tracking"]),
            feature_cfg=configlib.from_dict(FeatureConfig, loop_config.get("features")),
            train_speakers=list(loop_config.get("train_speakers", [])),
        )

    @property
    def stage(self) -> Stage:
        return stage_of(self.cfg.stage)

    @property
    def n_classes(self) -> int:
        return self.stage.n_classes(self.model_cfg)

    @property
    def input_cfg(self) -> RacnnInputConfig:
        return racnn_input_config(self.model_cfg, self.cfg.segment_overlap)

    def precision(self, device: torch.device) -> str:
        return recipe.resolve_precision(self.cfg.mixed_precision, device,
                                        self.model_cfg.racnn.input_size)


def _batches(shard, ctx: LoopContext, shuffle_seed: int | None = None):
    kwargs: dict[str, Any] = {"batch_size": ctx.cfg.optim.batch_size, "batch_format": "numpy"}
    if shuffle_seed is not None:
        kwargs.update(local_shuffle_buffer_size=ctx.cfg.optim.shuffle_buffer,
                      local_shuffle_seed=shuffle_seed)
    for batch in shard.iter_batches(**kwargs):
        yield batch, collate(batch, ctx.model_cfg.appearance.image_size,
                             ctx.model_cfg.keyframes, with_visual=ctx.stage.with_visual)


def augment_generator(ctx: LoopContext, epoch: int, rank: int) -> torch.Generator:
    """Augmentation draws: a fixed function of (seed, epoch, rank)."""
    return torch.Generator().manual_seed((ctx.cfg.seed * 1_000_003 + epoch) * 1009 + rank)


def speaker_indices(speakers, train_speakers: list[str]) -> torch.Tensor:
    """Each clip's index among the training speakers (the adversary's classes)."""
    order = {name: index for index, name in enumerate(train_speakers)}
    missing = sorted({str(s) for s in speakers} - set(order))
    if missing:
        raise ValueError(f"speakers {missing} are not among the training speakers the "
                         f"speaker adversary was built for ({train_speakers})")
    return torch.tensor([order[str(s)] for s in speakers])


def _adversarial_loss(model, raw, inputs, ctx: LoopContext, device, generator, epoch: int):
    """Logits and emotion + speaker-adversary loss of one speech batch."""
    optim = ctx.cfg.optim
    scale = adversary_scale(optim.speaker_adversary, epoch / optim.max_epochs)
    speech = inputs.speech(device, ctx.input_cfg, ctx.cfg.augment, generator)
    logits, _, speaker_logits = model(speech, adversary_scale=scale)
    targets = F.one_hot(inputs.labels.to(device), logits.shape[-1]).float()
    speakers = speaker_indices(raw["speaker"], ctx.train_speakers).to(device)
    loss = recipe.soft_cross_entropy(logits, targets, optim.label_smoothing)
    return logits, loss + F.cross_entropy(speaker_logits.float(), speakers)


def _training_loss(model, raw, inputs, ctx: LoopContext, device, generator, epoch: int):
    """Logits and loss of one training batch."""
    if ctx.stage.network == SPEECH and ctx.cfg.optim.speaker_adversary > 0:
        return _adversarial_loss(model, raw, inputs, ctx, device, generator, epoch)
    logits, targets = _training_logits(model, inputs, ctx, device, generator)
    return logits, recipe.soft_cross_entropy(logits, targets, ctx.cfg.optim.label_smoothing)


def _training_logits(model, inputs, ctx: LoopContext, device, generator):
    """Logits and soft targets of one training batch: augmented speech, and
    mixup of the speech input for a speech-only network."""
    labels = inputs.labels.to(device)
    augment, alpha, network = ctx.cfg.augment, ctx.cfg.optim.mixup_alpha, ctx.stage.network
    if network == SPEECH and alpha > 0:
        speech = inputs.speech(device, ctx.input_cfg, augment, generator)
        speech, targets = mixup(speech, labels, ctx.n_classes, alpha, generator)
        logits, _ = speech_logits(model, speech)
        return logits, targets
    logits, _ = network_logits(model, network, inputs, device, ctx.input_cfg, augment, generator)
    return logits, F.one_hot(labels, logits.shape[-1]).float()


def train_one_epoch(model, optimizer, shard, ctx: LoopContext, device, epoch: int,
                    seen_ids: list[str] | None = None,
                    ema: recipe.WeightEMA | None = None, rank: int = 0) -> dict[str, float]:
    """One pass over ``shard``: the recipe's learning rate, augmentation,
    loss, clipping and EMA; returns the epoch's training metrics."""
    model.train()
    optim = ctx.cfg.optim
    recipe.set_learning_rate(optimizer, recipe.learning_rate(optim, epoch))
    generator = augment_generator(ctx, epoch, rank)
    precision = ctx.precision(device)
    total_loss, correct, count = 0.0, 0, 0
    for raw, inputs in _batches(shard, ctx, shuffle_seed=ctx.cfg.seed + epoch):
        if seen_ids is not None:
            seen_ids.extend(str(c) for c in raw["clip_id"])
        with recipe.autocast(precision, device):
            logits, loss = _training_loss(model, raw, inputs, ctx, device, generator, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(unwrap(model))
        total_loss += loss.detach().item() * len(inputs)
        correct += int((logits.argmax(1).cpu() == inputs.labels).sum())
        count += len(inputs)
    return {"train_loss": total_loss / max(count, 1), "train_wa": correct / max(count, 1),
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def predict(model, shard, ctx: LoopContext, device) -> dict[str, np.ndarray]:
    """Logits, labels, hybrid features (a speech network's: its embedding),
    clip ids and, where the store has them, speakers over a whole dataset
    (no shuffling)."""
    model.eval()
    precision = ctx.precision(device)
    logits, labels, hybrids, ids, speakers = [], [], [], [], []
    for raw, inputs in _batches(shard, ctx):
        with recipe.autocast(precision, device):
            out, hybrid = network_logits(model, ctx.stage.network, inputs, device, ctx.input_cfg)
        logits.append(out.float().cpu())
        hybrids.append(hybrid.float().cpu())
        labels.append(inputs.labels)
        ids.extend(str(c) for c in raw["clip_id"])
        speakers.extend(str(s) for s in raw.get("speaker", ()))
    out = {
        "logits": torch.cat(logits).numpy(),
        "labels": torch.cat(labels).numpy(),
        "hybrid": torch.cat(hybrids).numpy(),
        "clip_id": np.asarray(ids),
    }
    if len(speakers) == len(ids):
        out["speaker"] = np.asarray(speakers)
    return out


def evaluate(predictions: dict[str, np.ndarray], label_names: list[str], prefix: str) -> dict[str, float]:
    """Loss, WA, UA and macro-F1 of predictions, keyed ``{prefix}_...``."""
    logits = torch.from_numpy(predictions["logits"])
    labels = torch.from_numpy(predictions["labels"])
    report = classification_report(labels.numpy(), logits.argmax(1).numpy(), label_names)
    return {
        f"{prefix}_loss": float(F.cross_entropy(logits, labels)),
        f"{prefix}_wa": report["wa"],
        f"{prefix}_ua": report["ua"],
        f"{prefix}_f1": report["macro_f1"],
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def evaluation_model(model, ema: recipe.WeightEMA | None) -> torch.nn.Module:
    """The weights that are scored and kept: the EMA's when there is one."""
    model = unwrap(model)
    if ema is None:
        return model
    scored = copy.deepcopy(model)
    scored.load_state_dict(ema.state)
    return scored


def track_best(state: LoopState, optim: recipe.OptimConfig, metrics: dict[str, float],
               scored: torch.nn.Module, best_state: dict | None, epoch: int) -> dict | None:
    """Advance ``state`` past ``epoch``; a better early-stopping metric keeps
    ``scored``'s weights as the best ones (returned)."""
    state.epoch = epoch + 1
    value = metrics[optim.early_stop_metric]
    if not recipe.is_better(optim.early_stop_metric, value, state.best_score):
        state.stale_epochs += 1
        return best_state
    state.best_score, state.best_epoch, state.stale_epochs = value, epoch, 0
    return {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}


def run_epoch(model, optimizer, train, val, ctx: LoopContext, device, state: LoopState,
              best_state: dict | None, ema: recipe.WeightEMA | None = None, rank: int = 0,
              seen_ids: list[str] | None = None) -> tuple[dict[str, float], dict | None]:
    """Train one epoch, score the validation set, advance ``state`` (early
    stopping, history); returns the epoch's metrics and the best weights."""
    epoch, started = state.epoch, time.perf_counter()
    metrics = train_one_epoch(model, optimizer, train, ctx, device, epoch, seen_ids, ema, rank)
    # Every rank scores the whole (unsplit) validation set, so every rank
    # takes the same early-stopping decision without a collective.
    scored = evaluation_model(model, ema)
    metrics.update(evaluate(predict(scored, val, ctx, device), ctx.label_names, "val"))
    # The loop's own time (train + validation), to tell the platform's
    # overhead apart from the work (bench/tune.py).
    metrics["epoch_seconds"] = time.perf_counter() - started
    best_state = track_best(state, ctx.cfg.optim, metrics, scored, best_state, epoch)
    state.record(metrics)
    return metrics, best_state


def effective_config(cfg: TrainConfig, model_cfg: ModelConfig) -> dict[str, Any]:
    """What a run trains with, flattened: the resume check compares it."""
    flat = {**configlib.flatten(cfg, "train."), **configlib.flatten(model_cfg, "model.")}
    return {key: storage.portable(value) for key, value in flat.items()}
