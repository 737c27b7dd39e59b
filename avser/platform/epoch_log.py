"""Rank 0's MLflow logging during training, made to outlive a short outage
of the tracking server.

MLflow's client retries a request for minutes by default and then raises,
which used to kill the training. Here each request gets a few retries
(:class:`OutageConfig`); an epoch whose metrics the server did not take is
kept and sent again with the next epoch, so an outage shorter than the rest
of the training loses nothing. The end of the run (artifacts, the final
metrics, registration) needs the server: :meth:`EpochLog.flush` waits for
it up to ``final_wait_s``, then gives up, and the run is marked FAILED
(:func:`mark_failed`) as soon as the server answers again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from avser.errors import AvserError, ConfigError
from avser.platform import tracking

RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"


@dataclass
class OutageConfig:
    http_retries: int = 2  # per MLflow request (MLflow's default, 7, blocks an epoch for minutes)
    http_timeout_s: int = 10  # per MLflow request
    final_wait_s: float = 300.0  # how long the end of a run waits for the server
    poll_s: float = 5.0  # between tries while waiting

    def __post_init__(self) -> None:
        if self.http_retries < 0 or self.http_timeout_s < 1 or self.final_wait_s < 0 or self.poll_s <= 0:
            raise ConfigError(f"mlflow_outage: http_retries ({self.http_retries}) >= 0, "
                              f"http_timeout_s ({self.http_timeout_s}) >= 1, final_wait_s "
                              f"({self.final_wait_s}) >= 0 and poll_s ({self.poll_s}) > 0")

    def apply_to_client(self) -> None:
        """This process's MLflow requests fail fast (unless the user set otherwise)."""
        os.environ.setdefault(RETRIES_ENV, str(self.http_retries))
        os.environ.setdefault(TIMEOUT_ENV, str(self.http_timeout_s))


def is_outage(error: BaseException) -> bool:
    """The server could not be reached (as opposed to a request it refused)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    return isinstance(error, MlflowException) and "failed with exception" in str(error)


def wait_for_server(action: Callable[[], None], cfg: OutageConfig, what: str) -> None:
    """``action()``, retried while the server is unreachable, up to ``cfg.final_wait_s``."""
    deadline = time.monotonic() + cfg.final_wait_s
    while True:
        try:
            action()
            return
        except Exception as error:  # noqa: BLE001  (only outages are retried)
            if not is_outage(error):
                raise
            if time.monotonic() >= deadline:
                raise AvserError(f"MLflow at {tracking.tracking_uri()} stayed unreachable for "
                                 f"{cfg.final_wait_s:.0f} s ({what}); bring the server back "
                                 f"(`avser mlflow up`) and run the job again: it resumes from "
                                 f"its checkpoint") from error
            print(f"MLflow unreachable ({what}); retrying in {cfg.poll_s:.0f} s", flush=True)
            time.sleep(cfg.poll_s)


@dataclass
class EpochLog:
    """Per-epoch metrics of one MLflow run: epochs the run already holds (a
    restored attempt) are skipped, epochs the server did not take are kept
    and sent again with the next one."""

    run_id: str
    cfg: OutageConfig
    logged: set[int] = field(default_factory=set)
    pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step in self.logged:
            return
        self.pending.append((step, dict(metrics)))
        try:
            self._send()
        except Exception as error:  # noqa: BLE001
            if not is_outage(error):
                raise
            print(f"MLflow unreachable: {len(self.pending)} epoch(s) of metrics kept, "
                  "sent again after the next epoch", flush=True)

    def flush(self) -> None:
        """Send what is pending, waiting for the server up to ``final_wait_s``."""
        wait_for_server(self._send, self.cfg, f"{len(self.pending)} epoch(s) of metrics pending")

    def _send(self) -> None:
        while self.pending:
            step, metrics = self.pending[0]
            tracking.log_metrics(self.run_id, metrics, step=step)
            self.logged.add(step)
            self.pending.pop(0)


def mark_failed(experiment: str, run_key: str, cfg: OutageConfig) -> None:
    """The driver, when a training gave up: its MLflow run, if still RUNNING,
    becomes FAILED (waiting for the server if it is down). Never raises: the
    training's own error is the one to report."""
    def action() -> None:
        run_id = tracking.find_run(experiment, run_key)
        if run_id is not None and tracking.client().get_run(run_id).info.status == "RUNNING":
            tracking.finish_run(run_id, status="FAILED")
            print(f"MLflow run {run_id} ({run_key}) marked FAILED", flush=True)

    cfg.apply_to_client()
    try:
        wait_for_server(action, cfg, f"marking run {run_key} FAILED")
    except Exception as error:  # noqa: BLE001
        print(f"could not mark the MLflow run of {run_key} FAILED: {error}", flush=True)
