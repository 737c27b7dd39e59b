"""Optuna's optimisation-history and parameter-importance plots of a search.

The Tune trials are replayed into an in-memory Optuna study (their params
and validation UA), so the plots work the same for a restored search.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from avser.platform import tracking  # noqa: E402

# Optuna's importance evaluator needs at least this many completed trials.
MIN_TRIALS_FOR_IMPORTANCE = 2


def _distribution(spec) -> optuna.distributions.BaseDistribution:
    if spec.type == "choice":
        return optuna.distributions.CategoricalDistribution(spec.values)
    if spec.type == "randint":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high))
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.type == "loguniform")


def replay_study(trials: pd.DataFrame, space: dict) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    distributions = {name: _distribution(spec) for name, spec in space.items()}
    for _, row in trials.dropna(subset=["val_ua"]).iterrows():
        params = {name: row[name] for name in space if not pd.isna(row[name])}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params},
            value=float(row["val_ua"])))
    return study


def _save_axes(axes, path: Path) -> Path:
    figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def log_optuna_plots(run_id: str, trials: pd.DataFrame, space: dict) -> list[str]:
    """Log the PNGs; returns the names of the plots that were made."""
    from optuna.visualization import matplotlib as ovm

    study = replay_study(trials, space)
    made = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if study.trials:
            path = _save_axes(ovm.plot_optimization_history(study), Path(tmp, "optimization_history.png"))
            tracking.log_figure_file(run_id, path, "figures")
            made.append(path.name)
        if len(study.trials) >= MIN_TRIALS_FOR_IMPORTANCE:
            try:
                axes = ovm.plot_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # e.g. every trial scored the same
                print(f"no parameter-importance plot: {exc}")
            else:
                path = _save_axes(axes, Path(tmp, "param_importances.png"))
                tracking.log_figure_file(run_id, path, "figures")
                made.append(path.name)
    return made
