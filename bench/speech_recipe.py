"""Recipe search for the speech network: the platform's training loop in a
plain PyTorch process (no Ray), on one split of a feature store.

    .venv/bin/python bench/speech_recipe.py --name NAME --protocol speaker \
        --test-speakers Actor_13,Actor_14,Actor_15,Actor_16 \
        [--config configs/pretrain_recipe_search.yaml] [--set optim.lr=3e-4 ...] \
        [--model-set racnn.input_size=112 ...] [--exclude-speakers A,B] [--out out/recipe]

It runs the same ``train_one_epoch``/``predict``/early stopping as
``jobs/pretrain_racnn.py`` over the same splits, so a recipe found here is a
config of the platform job. What it saves under ``OUT/NAME``: ``history.jsonl``
(one line per epoch), ``checkpoint.pt`` (every epoch: killed, the same
command resumes), ``result.json`` (the best epoch's validation and test
metrics; the test split is scored once, at the end, and selects nothing),
``curves.png`` and ``confusion_test.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--name", required=True, help="run folder under --out; reused to resume")
    parser.add_argument("--store", default="out/store-ravdess")
    parser.add_argument("--config", default="configs/pretrain_recipe_search.yaml",
                        help="the base recipe: the paper's, frozen (configs/pretrain_ravdess.yaml "
                             "holds the platform's measured best)")
    parser.add_argument("--protocol", choices=["random", "speaker"], default=None)
    parser.add_argument("--test-speakers", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training config override")
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override, e.g. racnn.input_size=112")
    parser.add_argument("--exclude-speakers", default="",
                        help="comma-separated speakers left out of every split (for recipe "
                             "ablations that must not touch a headline test split)")
    parser.add_argument("--ship", action="store_true",
                        help="no test split: train on every speaker but the validation ones "
                             "(carved as the protocol carves them); for the shipped model")
    parser.add_argument("--speaker-norm", action="store_true",
                        help="normalise each speaker's log-mels by that speaker's statistics "
                             "(avser.features.speaker_norm; uses test speakers' clips, not labels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/recipe")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    from avser.config import load_model_config
    from avser.platform.jobs import training_config

    args.folds = args.num_workers = args.run_name = None
    args.use_gpu = False
    cfg = training_config(args, extra=["stage=pretrain"])
    model_cfg = load_model_config(cfg.model_config, list(cfg.model_overrides) + args.model_set)
    return cfg, model_cfg


def split_frames(store: str, cfg, ship: bool = False, exclude: str = "", speaker_norm: bool = False):
    import numpy as np

    from avser.data.splits import make_splits, validation_split
    from avser.data.store import read_ok_rows
    from avser.platform.experiments import label_names_of
    from avser.platform.stages import SPEECH_COLUMNS

    frame = read_ok_rows(store, [*SPEECH_COLUMNS, "label_name"])
    if exclude:
        frame = frame[~frame["speaker"].astype(str).isin(exclude.split(","))].reset_index(drop=True)
    if speaker_norm:
        from avser.features.speaker_norm import normalise_by_speaker

        frame = normalise_by_speaker(frame)
    if ship:
        split = cfg.split
        train, val = validation_split(np.arange(len(frame)), frame["speaker"].astype(str),
                                      frame["label"], split.protocol, split.val_fraction, split.seed)
        parts = {"train": frame.iloc[train], "val": frame.iloc[val], "test": frame.iloc[:0]}
    else:
        split = make_splits(frame, cfg.split)[0]
        parts = {name: frame.iloc[getattr(split, name)] for name in ("train", "val", "test")}
    return parts, label_names_of(frame)


def run_args(run: Path) -> argparse.Namespace:
    """The arguments a run folder was made with (its ``command.txt``)."""
    argv = shlex.split((run / "command.txt").read_text())[2:]  # drop "python bench/speech_recipe.py"
    return parse_args(argv)


def prepare(args: argparse.Namespace):
    """(train config, model config, {train, val, test} store rows, loop context) of a run."""
    from avser.platform.epochs import LoopContext
    from avser.platform.runs import TrackingInfo

    cfg, model_cfg = build(args)
    parts, labels = split_frames(args.store, cfg, args.ship, args.exclude_speakers,
                                 args.speaker_norm)
    model_cfg.racnn.n_classes = len(labels)
    speakers = sorted(map(str, parts["train"]["speaker"].unique()))
    if cfg.optim.speaker_adversary > 0:
        model_cfg.racnn.adversary_speakers = len(speakers)
    ctx = LoopContext(cfg=cfg, model_cfg=model_cfg, label_names=labels, run_name=args.name,
                      tracking=TrackingInfo(experiment="none", uri="none", register=False),
                      train_speakers=speakers)
    return cfg, model_cfg, parts, ctx


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    torch.set_num_threads(args.threads)
    from avser import config as configlib
    from avser import recipe
    from avser.batches import FrameBatches
    from avser.models.factory import SPEECH, build_network
    from avser.platform.checkpoint import LoopState
    from avser.platform.epochs import run_epoch

    cfg, model_cfg, parts, ctx = prepare(args)
    out = Path(args.out, args.name)
    if (out / "result.json").exists():
        print(f"[{args.name}] finished: {(out / 'result.json').read_text()}")
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(" ".join(["python", *map(shlex.quote, sys.argv)]) + "\n")
    configlib.save(cfg, out / "train.yaml")
    configlib.save(model_cfg, out / "model.yaml")
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = build_network(SPEECH, model_cfg)
    optimizer = recipe.make_optimizer(model, cfg.optim)
    ema = recipe.WeightEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    state, best = LoopState(), None
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        best = saved["best"]
        if ema is not None:
            ema.load_state(saved["ema"])
        state = LoopState(**json.loads(saved["state"]))
    sizes = {k: len(v) for k, v in parts.items()}
    print(f"[{args.name}] {cfg.split.protocol}: {sizes}; input {model_cfg.racnn.input_size}, "
          f"precision {recipe.resolve_precision(cfg.mixed_precision, device, model_cfg.racnn.input_size)}; from epoch {state.epoch}",
          flush=True)
    train, val = FrameBatches(parts["train"]), FrameBatches(parts["val"])
    while state.epoch < cfg.optim.max_epochs and state.stale_epochs < cfg.optim.patience:
        epoch = state.epoch
        metrics, best = run_epoch(model, optimizer, train, val, ctx, device, state, best, ema)
        with (out / "history.jsonl").open("a") as log:
            log.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "best": best,
                    "ema": ema.state if ema else None, "state": json.dumps(state.__dict__)},
                   checkpoint.with_suffix(".tmp"))
        os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
        print(f"[{args.name}] epoch {epoch}: train loss {metrics['train_loss']:.3f} "
              f"WA {metrics['train_wa']:.3f}, val loss {metrics['val_loss']:.3f} "
              f"UA {metrics['val_ua']:.3f} (lr {metrics['lr']:.2e}, {metrics['epoch_seconds']:.1f} s)",
              flush=True)
    finish(out, model, best, state, ctx, parts, device, args.store)


def finish(out: Path, model, best, state, ctx, parts, device, store: str) -> None:
    """Best weights -> validation and (once) test scores, the bundle, the figures."""
    from avser.batches import FrameBatches
    from avser.bundle import ModelBundle, save_bundle
    from avser.data.store import load_feature_config
    from avser.metrics import classification_report, plot_confusion, plot_curves
    from avser.platform.epochs import evaluate, predict

    labels = ctx.label_names

    model.load_state_dict(best)
    result = {"best_epoch": state.best_epoch, "epochs": state.epoch,
              "speakers": {k: sorted(map(str, v["speaker"].unique())) for k, v in parts.items()}}
    for name in ("val", "test"):
        if not len(parts[name]):
            continue
        preds = predict(model, FrameBatches(parts[name]), ctx, device)
        result.update(evaluate(preds, labels, name))
        if name == "test":
            report = classification_report(preds["labels"], preds["logits"].argmax(1), labels)
            plot_confusion(report["confusion"], labels, out / "confusion_test.png",
                           title=f"{out.name}: test (UA {result['test_ua']:.1%})")
    save_bundle(ModelBundle("speech", ctx.model_cfg, load_feature_config(store),
                            ctx.cfg.segment_overlap, labels, best,
                            {"run": out.name, "result": result}), out / "model.avser.pt")
    plot_curves(state.history, out / "curves.png", title=out.name)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    test = f"test UA {result['test_ua']:.3f} (WA {result['test_wa']:.3f})" if "test_ua" in result else "no test split"
    print(f"[{out.name}] best epoch {state.best_epoch}: val UA {result['val_ua']:.3f}, {test}",
          flush=True)


if __name__ == "__main__":
    main()
