"""avser.platform.epoch_log against a real sqlite store, with the outage a
real refused connection (a tracking URI whose port nothing listens on)."""

from __future__ import annotations

import socket

import pytest

from avser.errors import AvserError, ConfigError
from avser.platform import tracking
from avser.platform.epoch_log import EpochLog, OutageConfig, mark_failed

FAST = OutageConfig(http_retries=0, http_timeout_s=2, final_wait_s=1.0, poll_s=0.2)


def closed_port_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def run(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(tracking.TRACKING_URI_ENV, uri)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(key, "0" if "RETRIES" in key else "2")
    run_id = tracking.start_run("avser-outage", run_key="outage", run_name="outage")
    return uri, run_id, monkeypatch


def steps(run_id: str, key: str = "val_ua") -> list[int]:
    return sorted(m.step for m in tracking.client().get_metric_history(run_id, key))


def test_epochs_logged_during_an_outage_are_sent_after_it(run):
    uri, run_id, patch = run
    log = EpochLog(run_id, FAST)
    log.log({"val_ua": 0.1}, step=0)
    patch.setenv(tracking.TRACKING_URI_ENV, closed_port_uri())  # the server goes away
    log.log({"val_ua": 0.2}, step=1)
    log.log({"val_ua": 0.3}, step=2)
    assert [s for s, _ in log.pending] == [1, 2]
    patch.setenv(tracking.TRACKING_URI_ENV, uri)  # and comes back
    log.log({"val_ua": 0.4}, step=3)
    assert log.pending == [] and steps(run_id) == [0, 1, 2, 3]
    log.log({"val_ua": 0.9}, step=3)  # an epoch the run holds is not logged twice
    assert steps(run_id) == [0, 1, 2, 3]


def test_the_final_flush_gives_up_after_final_wait_s(run):
    _, run_id, patch = run
    log = EpochLog(run_id, FAST)
    patch.setenv(tracking.TRACKING_URI_ENV, closed_port_uri())
    log.log({"val_ua": 0.2}, step=0)
    with pytest.raises(AvserError, match="stayed unreachable for 1 s.*avser mlflow up"):
        log.flush()
    assert len(log.pending) == 1


def test_a_run_given_up_on_is_marked_failed_once_reachable(run):
    uri, run_id, patch = run
    mark_failed("avser-outage", "outage", FAST)
    assert tracking.client().get_run(run_id).info.status == "FAILED"
    tracking.client().update_run(run_id, status="FINISHED")
    mark_failed("avser-outage", "outage", FAST)  # only a RUNNING run changes
    assert tracking.client().get_run(run_id).info.status == "FINISHED"
    patch.setenv(tracking.TRACKING_URI_ENV, closed_port_uri())
    mark_failed("avser-outage", "outage", FAST)  # unreachable: says so, does not raise


def test_outage_config_is_checked_on_load():
    with pytest.raises(ConfigError, match="http_retries"):
        OutageConfig(http_retries=-1)
