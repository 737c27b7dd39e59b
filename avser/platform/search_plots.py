"""The search's figures on its parent run: best-so-far, parallel coordinates,
Optuna's optimisation history and parameter importances.

The Tune trials are replayed into an in-memory Optuna study (their params
and validation UA), so the plots work the same for a restored search.
"""

from __future__ import annotations

import tempfile
import warnings
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


def plot_best_so_far(trials: pd.DataFrame, path: Path, metric: str = "val_ua") -> Path:
    """Each trial's validation UA in the order the trials ran, and the best so far;
    the KLDA head's too where the KLDA stage searched a trial."""
    figure, axes = plt.subplots(figsize=(7, 4))
    order = range(1, len(trials) + 1)
    scores = trials[metric].astype(float)
    axes.scatter(order, scores, s=18, color="tab:blue", alpha=0.6, label="trial (network head)")
    axes.step(order, scores.cummax(), where="post", color="tab:blue", label="best so far")
    if "klda_val_ua" in trials and trials["klda_val_ua"].notna().any():
        axes.scatter(order, trials["klda_val_ua"].astype(float), marker="^", s=30,
                     color="tab:orange", label="KLDA head (top trials)")
    axes.set_xlabel("trial (in the order they started)")
    axes.set_ylabel("validation UA")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("search: validation UA per trial and best so far")
    return _save_axes(axes, path)


def log_optuna_plots(run_id: str, trials: pd.DataFrame, space: dict) -> list[str]:
    """Log the PNGs; returns the names of the plots that were made."""
    study = replay_study(trials, space)
    made = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Optuna's matplotlib plots are marked experimental; we pin optuna and use them knowingly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.visualization import matplotlib as ovm

        if study.trials:
            for name, plot in (("best_so_far.png", lambda p: plot_best_so_far(trials, p)),
                               ("optimization_history.png",
                                lambda p: _save_axes(ovm.plot_optimization_history(study), p)),
                               ("parallel_coordinates.png",
                                lambda p: _save_axes(ovm.plot_parallel_coordinate(study), p))):
                path = plot(Path(tmp, name))
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
