"""The console's trial table and the search's best-so-far figure."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from avser.platform.console import TrialTable
from avser.platform.search_plots import plot_best_so_far


def trial(trial_id: str, **config):
    return SimpleNamespace(trial_id=trial_id, config=config)


class Printed:
    """What the table printed; pytest's captured stdout is no terminal, so
    lines are printed, not redrawn."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().out


@pytest.fixture
def printed(capsys) -> Printed:
    return Printed(capsys)


def test_a_log_gets_a_line_when_a_trial_starts_and_one_when_it_ends(printed) -> None:
    table = TrialTable(metric="val_ua")
    a, b = trial("aaaa0001", **{"optim.lr": 0.0021, "model.fusion.hidden": 16}), trial("bbbb0002")
    table.on_trial_start(0, [], a)
    for epoch, score in enumerate([0.2, 0.5, 0.4]):
        table.on_trial_result(0, [], a, {"epoch": epoch, "val_ua": score})
    table.on_trial_result(0, [], a, {"epoch": 2, "training_finished": 1})
    table.on_trial_complete(0, [], a)
    table.on_trial_start(0, [], b)
    table.on_trial_result(0, [], b, {"epoch": 0, "val_ua": 0.1})
    table.on_trial_complete(0, [], b)  # ASHA stopped it: no finished report
    lines = printed.getvalue().splitlines()
    assert lines[0].split()[:3] == ["trial", "state", "epochs"]
    assert len(lines) == 5  # header, then a start and an end line per trial
    assert lines[2].split()[:5] == ["aaaa0001", "FINISHED", "3", "40.0%", "50.0%"]
    assert "lr=0.0021" in lines[2] and "hidden=16" in lines[2]
    assert lines[4].split()[:4] == ["bbbb0002", "STOPPED", "1", "10.0%"]


def test_an_errored_trial_says_so(printed) -> None:
    table = TrialTable()
    table.on_trial_error(0, [], trial("cccc0003"))
    assert printed.getvalue().splitlines()[-1].split()[:2] == ["cccc0003", "ERROR"]


def test_best_so_far_is_drawn(tmp_path) -> None:
    trials = pd.DataFrame({"val_ua": [0.2, 0.6, 0.4], "klda_val_ua": [None, 0.7, None]})
    path = plot_best_so_far(trials, tmp_path / "best.png")
    assert path.stat().st_size > 5000
