"""A registered version's description: a model card that reads in the MLflow UI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from avser.data.splits import SplitConfig
from avser.platform.runs import COMMAND_TAG, CORPUS_TAG, DATA_HASH_TAG, MLFLOW_GIT_COMMIT

# Metrics shown first, in this order, when a run has them.
HEADLINE_METRICS = ("final_val_ua", "test_ua", "test_wa", "test_f1", "klda_val_ua", "klda_test_ua",
                    "network_val_ua", "network_test_ua")


def _split_line(split: SplitConfig) -> str:
    if split.test_speakers:
        return f"`speaker`: test speakers {', '.join(split.test_speakers)} held out"
    if split.protocol == "speaker":
        return f"`speaker`: {split.n_folds} speaker-disjoint folds, seed {split.seed}"
    return (f"`random`: stratified, {split.test_fraction:.0%} test, "
            f"{split.val_fraction:.0%} of the rest for validation, seed {split.seed}")


def version_card(title: str, tags: Mapping[str, str], split: SplitConfig, labels: Sequence[str],
                 metrics: Mapping[str, float], made_by: str) -> str:
    """Markdown: what the model is, what it was trained on, how it scored, what made it."""
    facts = [
        ("training data", f"{tags.get(CORPUS_TAG, '?')} (data hash `{tags.get(DATA_HASH_TAG, '?')}`)"),
        ("protocol", _split_line(split)),
        ("classes", ", ".join(labels)),
        ("made by", made_by),
        ("command", f"`{tags.get(COMMAND_TAG, '?')}`"),
        ("git commit", f"`{tags.get(MLFLOW_GIT_COMMIT, '?')}`"),
    ]
    shown = [k for k in HEADLINE_METRICS if k in metrics]
    rows = [f"| {k} | {metrics[k]:.4f} |" for k in shown]
    return "\n".join([
        f"# {title}", "",
        "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in facts), "",
        "## Scores", "",
        "Test splits are scored once, after selection on validation.", "",
        "| metric | value |", "| --- | ---: |", *rows, "",
    ])
