"""Test-time views: a run's validation UA when its probabilities are averaged
over seeded augmentation draws of each clip, against one clean view.

    .venv/bin/python bench/speech_tta.py out/recipe/RUN_A [out/recipe/RUN_B ...] [--views 4]

Each run folder is one made by ``bench/speech_recipe.py``; several runs of one
split are also scored as an ensemble (the mean of all their views). Only the
validation split is scored: this decides whether test-time views are worth
adopting, so it must not look at the test speakers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import speech_recipe  # noqa: E402  (the run's own split and loop context)
from speech_readout import ua  # noqa: E402

from avser import recipe  # noqa: E402
from avser.batches import FrameBatches, collate  # noqa: E402
from avser.bundle import load_bundle  # noqa: E402
from avser.features.augment import SpeechAugmentConfig  # noqa: E402
from avser.models.factory import SPEECH, network_logits  # noqa: E402

CPU = torch.device("cpu")
# Views: which augmentations a test-time draw applies (strengths as the shipped recipe's).
VIEWS = {
    "shift": SpeechAugmentConfig(enabled=True, time_masks=0, freq_masks=0, tempo=0.0,
                                 shift=0.05, mel_warp=0.0),
    "tempo+shift": SpeechAugmentConfig(enabled=True, time_masks=0, freq_masks=0, tempo=0.05,
                                       shift=0.05, mel_warp=0.0),
    "training augmentation": SpeechAugmentConfig(enabled=True, freq_mask_bins=12, tempo=0.05,
                                                 shift=0.1, mel_warp=0.05),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of bench/speech_recipe.py")
    parser.add_argument("--views", type=int, default=4, help="augmented draws per clip")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


@torch.no_grad()
def probabilities(model, rows, ctx, augment: SpeechAugmentConfig | None, seed: int):
    """(N, C) softmax probabilities and (N,) labels of one view of every clip."""
    generator = torch.Generator().manual_seed(seed)
    probs, labels = [], []
    batches = FrameBatches(rows).iter_batches(batch_size=ctx.cfg.optim.batch_size,
                                              batch_format="numpy")
    for raw in batches:
        inputs = collate(raw, ctx.model_cfg.appearance.image_size, ctx.model_cfg.keyframes,
                         with_visual=False)
        with recipe.autocast(ctx.precision(CPU), CPU):
            logits, _ = network_logits(model, SPEECH, inputs, CPU, ctx.input_cfg, augment,
                                       generator)
        probs.append(logits.float().softmax(-1))
        labels.append(inputs.labels)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def run_views(run: Path, n_views: int) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """{view name: (N, C) mean probabilities} on the run's validation clips, labels, names."""
    args = speech_recipe.run_args(run)
    _, _, frames, ctx = speech_recipe.prepare(args)
    model = load_bundle(run / "model.avser.pt").network()
    clean, labels = probabilities(model, frames["val"], ctx, None, 0)
    views = {"clean (one view)": clean}
    for name, augment in VIEWS.items():
        drawn = sum(probabilities(model, frames["val"], ctx, augment, 1 + k)[0]
                    for k in range(n_views))
        views[f"{name} x {n_views} + clean"] = (drawn + clean) / (n_views + 1)
    return views, labels, ctx.label_names


def main() -> None:
    args = parse_args()
    os.chdir(REPO)  # the runs' commands name the store relative to the repository
    torch.set_num_threads(args.threads)
    summed, rows = {}, {}
    for run in args.runs:
        views, labels, names = run_views(run.resolve(), args.views)
        for view, probs in views.items():
            summed[view] = summed.get(view, 0) + probs
            rows.setdefault(view, []).append(100 * ua(labels, probs.argmax(1), names))
    header = [run.name for run in args.runs] + (["ensemble"] if len(args.runs) > 1 else [])
    print("| view | " + " | ".join(f"`{h}` val UA" for h in header) + " |")
    print("| --- |" + " ---: |" * len(header))
    for view, scores in rows.items():
        if len(args.runs) > 1:
            scores = scores + [100 * ua(labels, summed[view].argmax(1), names)]
        print(f"| {view} | " + " | ".join(f"{s:.1f}" for s in scores) + " |")


if __name__ == "__main__":
    main()
