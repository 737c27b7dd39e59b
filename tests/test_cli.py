"""Bad input at the entry points: the ``avser`` command and every job turn an
``AvserError`` into one line on stderr and exit code 2, never a traceback.

The jobs are called in-process through their ``main(argv)`` (the error comes
before any Ray or MLflow start-up), and one of them once as a real process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avser import cli
from avser.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[1]
JOBS = ("preprocess", "pretrain_racnn", "train_fusion", "tune_fusion")


def load_job(name: str):
    """``jobs/<name>.py`` as a module (the jobs folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bad_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("optim: {lr: [1e-3\n")  # an unclosed list: a multi-line YAML error
    return path


def job_argv(name: str, config: Path, tmp_path: Path) -> list[str]:
    if name == "preprocess":
        return ["--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "store"),
                "--config", str(config)]
    if name == "tune_fusion":
        return ["--config", str(config)]
    return ["--store", str(tmp_path / "store"), "--config", str(config)]


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("name", JOBS)
def test_job_reports_a_config_error_in_one_line_and_exits_2(name, tmp_path, capsys):
    config = bad_yaml(tmp_path)
    assert load_job(name).main(job_argv(name, config, tmp_path)) == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err, str(config), "not valid YAML")


@pytest.mark.parametrize("name", JOBS)
def test_job_reports_a_missing_config_file(name, tmp_path, capsys):
    config = tmp_path / "nope.yaml"
    assert load_job(name).main(job_argv(name, config, tmp_path)) == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err, str(config), "does not exist")


def test_job_as_a_process_prints_no_traceback(tmp_path):
    config = tmp_path / "nope.yaml"
    argv = [sys.executable, str(REPO / "jobs" / "preprocess.py"),
            *job_argv("preprocess", config, tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert_one_error_line(done.stderr, str(config))


def test_promote_of_an_unknown_model_is_one_line(tmp_path, monkeypatch, capsys):
    from avser.platform import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client().search_registered_models()  # MLflow logs its database creation here
    capsys.readouterr()
    assert cli.main(["promote", "--name", "nope"]) == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err, "nope@candidate", "mlflow.db",
                          "no registered model")
    assert cli.main(["promote", "--name", "nope", "--from", "3"]) == EXIT_BAD_INPUT
    assert_one_error_line(capsys.readouterr().err, "model nope version 3")
