"""What a person reads while a job runs: one line per trial, Ray's log folder once.

Ray's own output is quietened where it starts (Ray Data's logging config in
``ray_data_logging.yaml``, Tune's verbosity 0); everything still reaches the
files in Ray's log folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

# Columns of the trial table: (header, width).
COLUMNS = (("trial", 10), ("state", 10), ("epochs", 6), ("val UA", 7), ("best", 7), ("params", 0))
ERASE_LINE = "\x1b[2K"


def quiet_ray_data() -> None:
    """No Ray Data progress bars, in this process or in the workers that read
    its datasets: a dataset carries the driver's DataContext to the Train
    workers and trials that iterate it, which draw a bar per pass over the
    validation set otherwise. Jobs print their own progress (one line per
    epoch or trial; preprocessing's clip bar)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False


def ray_log_folder() -> str | None:
    """Where this Ray session's logs are (None before ``ray.init``)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else None


def print_ray_log_folder(out: TextIO = sys.stdout) -> None:
    folder = ray_log_folder()
    if folder:
        print(f"Ray's full logs (workers, Ray Data, Tune): {folder}", file=out, flush=True)


@dataclass
class TrialRow:
    trial_id: str
    params: str
    state: str = "RUNNING"
    epochs: int = 0
    val_ua: float | None = None
    best: float | None = None
    finished: bool = False

    def line(self) -> str:
        cells = [self.trial_id, self.state, str(self.epochs), _percent(self.val_ua),
                 _percent(self.best), self.params]
        return "  ".join(c.ljust(width) for c, (_, width) in zip(cells, COLUMNS)).rstrip()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _short_params(config: dict[str, Any]) -> str:
    parts = []
    for key, value in config.items():
        name = key.rsplit(".", 1)[-1]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


@dataclass
class TrialTable(tune.Callback):
    """A table with one line per trial (trial, state, epochs, val UA, best, params).

    On a terminal the table is redrawn in place after every epoch; in a log
    (no terminal) a trial's line is printed when it starts and when it ends,
    so the log reads top to bottom.
    """

    metric: str = "val_ua"
    finished_key: str = "training_finished"  # what the loop reports with its last result
    rows: dict[str, TrialRow] = field(default_factory=dict)
    _drawn: int = 0

    @property
    def out(self) -> TextIO:
        # Looked up, not stored: Tune saves its callbacks with the experiment state.
        return sys.stdout

    @property
    def live(self) -> bool:
        return self.out.isatty()

    def header(self) -> str:
        return "  ".join(h.ljust(w) for h, w in COLUMNS).rstrip()

    def _row(self, trial) -> TrialRow:
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = TrialRow(trial.trial_id, _short_params(trial.config))
        return self.rows[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        row.state = "RUNNING"
        self._show(row)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._row(trial)
        if "epoch" in result:  # 0-based; the loop's last report repeats the last epoch
            row.epochs = int(result["epoch"]) + 1
        value = result.get(self.metric)
        if value is not None:
            row.val_ua = float(value)
            row.best = max(row.best or 0.0, row.val_ua)
        row.finished = row.finished or bool(result.get(self.finished_key))
        if self.live:
            self._show(row)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        # Tune completes a trial that ASHA stopped just as one that ran to its end.
        row.state = "FINISHED" if row.finished else "STOPPED"
        self._show(row)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        row = self._row(trial)
        row.state = "ERROR"
        self._show(row)

    def _show(self, row: TrialRow) -> None:
        if not self.live:
            if not self._drawn:
                print(self.header(), file=self.out)
                self._drawn = 1
            print(row.line(), file=self.out, flush=True)
            return
        if self._drawn:  # back to the top of the table drawn last time
            self.out.write(f"\x1b[{self._drawn}F")
        lines = [self.header(), *(r.line() for r in self.rows.values())]
        self.out.write("".join(f"{ERASE_LINE}{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
