"""Mean ± std over speaker folds of finished ``bench/speech_recipe.py`` runs.

    .venv/bin/python bench/fold_table.py out/recipe abl-full abl-noaug abl-nols abl-const abl-none

Each row name ``R`` collects the run folders ``R-f1``, ``R-f2``, ... that
have a ``result.json``; a row lists the folds it has, the best epochs, the
validation UA (the selection set) and the test UA (scored once per fold,
selecting nothing) as mean ± sample std, and each fold's test UA.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def fold_results(root: Path, row: str) -> dict[int, dict]:
    found = {}
    for folder in sorted(root.glob(f"{row}-f*")):
        result = folder / "result.json"
        suffix = folder.name.removeprefix(f"{row}-f")
        if suffix.isdigit() and result.is_file():
            found[int(suffix)] = json.loads(result.read_text())
    return found


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * values[0]:.1f}" if values else "-"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(root: Path, rows: list[str]) -> str:
    lines = ["| recipe | folds | best epochs | val UA | test UA | test UA per fold |",
             "| --- | ---: | --- | ---: | ---: | --- |"]
    for row in rows:
        folds = fold_results(root, row)
        results = [folds[k] for k in sorted(folds)]
        per_fold = ", ".join(f"f{k} {100 * folds[k]['test_ua']:.1f}" for k in sorted(folds))
        lines.append(f"| `{row}` | {len(results)} | {', '.join(str(r['best_epoch']) for r in results)} "
                     f"| {mean_std([r['val_ua'] for r in results])} "
                     f"| {mean_std([r['test_ua'] for r in results])} | {per_fold} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(table(Path(sys.argv[1]), sys.argv[2:]))
