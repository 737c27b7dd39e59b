"""Markdown table of finished ``bench/speech_recipe.py`` runs.

    .venv/bin/python bench/recipe_table.py out/recipe/p112-paper out/recipe/p112-mid-overlap5 ...

One row per run folder: protocol, input size, Conv1, speech head, the recipe's switches,
epochs (best epoch), validation UA at the best epoch, test UA (scored once,
selecting nothing), median seconds per epoch and the whole wall time.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml


def recipe_of(train: dict) -> str:
    optim, augment = train["optim"], train["augment"]
    parts = [optim["optimizer"], f"lr {optim['lr']:g}", optim["schedule"]]
    if optim["weight_decay"]:
        parts.append(f"wd {optim['weight_decay']:g}")
    if optim["label_smoothing"]:
        parts.append(f"LS {optim['label_smoothing']:g}")
    if optim["mixup_alpha"]:
        parts.append(f"mixup {optim['mixup_alpha']:g}")
    if optim["ema_decay"]:
        parts.append(f"EMA {optim['ema_decay']:g}")
    parts.append("aug" if augment["enabled"] else "no aug")
    return ", ".join(parts)


def row(folder: Path) -> str:
    result = json.loads((folder / "result.json").read_text())
    train = yaml.safe_load((folder / "train.yaml").read_text())
    model = yaml.safe_load((folder / "model.yaml").read_text())["racnn"]
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    seconds = [h["epoch_seconds"] for h in history]
    test = f"{100 * result['test_ua']:.1f}" if "test_ua" in result else "-"
    return (f"| `{folder.name}` | `{train['split']['protocol']}` | {model['input_size']} | "
            f"{model['conv1']} | {model.get('head', 'mean')} | {recipe_of(train)} | {result['epochs']} ({result['best_epoch']}) | "
            f"{100 * result['val_ua']:.1f} | {test} | {statistics.median(seconds):.1f} | "
            f"{sum(seconds) / 60:.0f} min |")


def main() -> None:
    print("| run | protocol | input | Conv1 | head | recipe | epochs (best) | val UA | test UA | "
          "s/epoch | wall |")
    print("| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for folder in map(Path, sys.argv[1:]):
        if (folder / "result.json").is_file():
            print(row(folder))


if __name__ == "__main__":
    main()
