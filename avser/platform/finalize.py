"""After training (rank 0): final metrics, the KLDA head, artifacts, registry.

Kept apart from the per-worker loop so the loop reads as a training loop.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from avser.bundle import ModelBundle, save_bundle
from avser.heads import evaluate_head, fit_klda_head, save_head
from avser.metrics import classification_report, plot_confusion, plot_curves
from avser.platform import checkpoint, registry, tracking
from avser.platform.epochs import effective_config, evaluate
from avser.models.factory import SPEECH
from avser.platform.model_card import version_card
from avser.speaker_adapt import fit_speaker_readout, speaker_readout_logits, speakers_with_enough_clips

# Metric prefix of the speaker-adaptive readout's scores.
ADAPTIVE = "adaptive_"

def _network_metrics(splits: dict[str, dict[str, np.ndarray]], label_names: list[str]):
    metrics: dict[str, float] = {}
    for name, preds in splits.items():
        metrics.update(evaluate(preds, label_names, f"final_{name}" if name != "test" else "test"))
    return metrics


def _klda_head(ctx, splits):
    """The KLDA head fitted on the training split's hybrid features, when the stage has one."""
    if not ctx.stage.fits_klda or not ctx.cfg.klda.enabled or "train" not in splits:
        return None
    train = splits["train"]
    return fit_klda_head(train["hybrid"], train["labels"], ctx.cfg.klda, seed=ctx.cfg.seed)


def _klda_metrics(ctx, splits, head) -> dict[str, float]:
    if head is None:
        return {}
    metrics = {}
    for name in ("val", "test"):
        if name in splits:
            report = evaluate_head(head, splits[name]["hybrid"], splits[name]["labels"], ctx.label_names)
            metrics.update({f"klda_{name}_ua": report["ua"], f"klda_{name}_wa": report["wa"],
                            f"klda_{name}_f1": report["macro_f1"]})
    return metrics


def _speaker_readout(ctx, splits):
    """The speaker-adaptive readout of a speech network, fitted on the training
    speakers that have enough clips, when enabled; None otherwise."""
    cfg = ctx.cfg.speaker_readout
    train = splits.get("train")
    if not cfg.enabled or ctx.stage.network != SPEECH or train is None or "speaker" not in train:
        return None
    keep = speakers_with_enough_clips(train["speaker"], cfg.min_clips)
    if len(np.unique(train["labels"][keep])) < len(ctx.label_names):
        print(f"[{ctx.run_name}] no speaker-adaptive readout: the training speakers with "
              f"{cfg.min_clips}+ clips do not cover every class", flush=True)
        return None
    return fit_speaker_readout(train["hybrid"][keep], train["labels"][keep], train["speaker"][keep],
                               len(ctx.label_names), cfg)


def _speaker_readout_metrics(ctx, splits, readout) -> dict[str, float]:
    """UA, WA and macro-F1 of the readout on the validation and test speakers
    that have enough clips to be standardised by."""
    metrics: dict[str, float] = {}
    for name in ("val", "test") if readout is not None else ():
        preds = splits.get(name)
        if preds is None or "speaker" not in preds:
            continue
        keep = speakers_with_enough_clips(preds["speaker"], int(readout["min_clips"]))
        if not keep.any():
            continue
        logits = speaker_readout_logits(readout, preds["hybrid"][keep], preds["speaker"][keep], name)
        report = classification_report(preds["labels"][keep], logits.argmax(1), ctx.label_names)
        metrics.update({f"{ADAPTIVE}{name}_ua": report["ua"], f"{ADAPTIVE}{name}_wa": report["wa"],
                        f"{ADAPTIVE}{name}_f1": report["macro_f1"]})
    return metrics


def _log_figures(run_id: str, ctx, splits, history) -> None:
    split = "test" if "test" in splits else "val"
    preds = splits[split]
    report = classification_report(preds["labels"], preds["logits"].argmax(1), ctx.label_names)
    with tempfile.TemporaryDirectory() as tmp:
        confusion_png = plot_confusion(np.asarray(report["confusion"]), ctx.label_names,
                                       os.path.join(tmp, f"confusion_{split}.png"),
                                       title=f"{ctx.run_name}: {split} confusion")
        curves_png = plot_curves(history, os.path.join(tmp, "curves.png"), title=ctx.run_name)
        tracking.log_figure_file(run_id, confusion_png, "figures")
        tracking.log_figure_file(run_id, curves_png, "figures")


def bundle_of(ctx, model, metrics: dict[str, float], speaker_readout=None) -> ModelBundle:
    """The plain-data bundle of a trained model (avser predict / evaluate)."""
    return ModelBundle(
        kind=ctx.stage.network, model_cfg=ctx.model_cfg, feature_cfg=ctx.feature_cfg,
        segment_overlap=ctx.cfg.segment_overlap, label_names=list(ctx.label_names),
        state_dict=model.state_dict(),
        card={"run_name": ctx.run_name, "protocol": ctx.cfg.split.protocol,
              "metrics": {k: float(v) for k, v in metrics.items()}},
        speaker_readout=speaker_readout,
    )


def register(ctx, run_id: str, bundle_path: str | Path, head_path: str | Path | None,
             metrics: dict[str, float]) -> int:
    name = ctx.cfg.register_as or ctx.stage.registered_name
    card = version_card(f"{name}: {ctx.stage.network} model from run {ctx.run_name}",
                        ctx.tracking.tags, ctx.cfg.split, ctx.label_names, metrics,
                        made_by=f"training run `{ctx.run_name}` (stage {ctx.cfg.stage})")
    return registry.register_version(
        run_id, name, bundle_path,
        tags={**ctx.tracking.tags, "run_name": ctx.run_name, "stage": ctx.cfg.stage},
        head_path=head_path, card=card,
        metrics={k: v for k, v in metrics.items()
                 if k.startswith(("test_", "klda_", ADAPTIVE, "final_val"))})


def finish_run(ctx, model, splits, state, folder: str) -> dict[str, float]:
    """Final metrics, KLDA, figures and registration; the final checkpoint
    (best weights, hybrid features, labels, bundle) is written to ``folder``."""
    head, readout = _klda_head(ctx, splits), _speaker_readout(ctx, splits)
    metrics = {**_network_metrics(splits, ctx.label_names), **_klda_metrics(ctx, splits, head),
               **_speaker_readout_metrics(ctx, splits, readout)}
    metrics["best_epoch"] = state.best_epoch
    bundle_path = save_bundle(bundle_of(ctx, model, metrics, readout),
                              os.path.join(folder, checkpoint.BUNDLE_FILE))
    head_path = None
    if head is not None:
        head_path = os.path.join(folder, checkpoint.KLDA_HEAD_FILE)
        save_head(head, head_path)
    checkpoint.save_hybrid_features(splits, folder)
    Path(folder, checkpoint.LABELS_FILE).write_text(json.dumps(ctx.label_names))
    run_id = state.mlflow_run_id
    tracking.log_metrics(run_id, metrics, step=state.epoch)
    # Tune's scheduler reads val_ua from every report, the final one included:
    # there it is the best epoch's (restored weights) validation UA. Not logged
    # above: in MLflow val_ua is the per-epoch curve, and this step is no epoch.
    metrics["val_ua"] = metrics.get("final_val_ua", float("nan"))
    if ctx.tracking.figures:
        _log_figures(run_id, ctx, splits, state.history)
    if ctx.tracking.register:
        metrics["model_version"] = float(register(ctx, run_id, bundle_path, head_path, metrics))
    tracking.finish_run(run_id)
    state.final_metrics = metrics
    checkpoint.save(folder, model.state_dict(), state, effective_config(ctx.cfg, ctx.model_cfg))
    return metrics
