"""`avser mlflow up | down | status`: the MLflow tracking server a cluster logs to.

A file or SQLite store works for one machine; the nodes of a cluster need a
server. ``up`` starts ``mlflow server`` on loopback by default, with a SQLite
backend and an artifact root (proxied by the server, so nodes need no access
to it) in its state folder; give ``--backend-store-uri postgresql://...`` for
many writers. Bound to any other address it runs MLflow's basic-auth app:
the admin password and the app's CSRF key are generated into mode-600
files, handed to MLflow by ``MLFLOW_AUTH_ADMIN_PASSWORD`` and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` (never on a command line), and clients read
it through ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``. The
server runs in a session of its own, which ``down`` stops.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from avser.errors import AvserError
from avser.platform.nodes import http_status, is_loopback, pick_ports, session_pids, stop_session

STATE_FILE = "mlflow-server.json"
PASSWORD_FILE = "mlflow-admin-password"
SECRET_KEY_FILE = "mlflow-flask-secret"  # the auth app's CSRF key
AUTH_CONFIG = "basic_auth.ini"
LOG_FILE = "mlflow-server.log"
ADMIN = "admin"
START_WAIT_SECONDS = 90.0


@dataclass
class ServerState:
    host: str
    port: int
    backend_uri: str
    artifacts: str
    sid: int
    auth: bool

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"


def read_state(folder: Path) -> ServerState | None:
    path = folder / STATE_FILE
    return ServerState(**json.loads(path.read_text())) if path.exists() else None


def _password(folder: Path, name: str = PASSWORD_FILE) -> str:
    """A secret kept in a mode-600 file of the state folder (made on first use)."""
    path = folder / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _auth_config(folder: Path) -> Path:
    path = folder / AUTH_CONFIG
    path.write_text(f"[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{folder / 'basic_auth.db'}\nadmin_username = {ADMIN}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def _check_auth_app() -> None:
    try:
        import flask_wtf  # noqa: F401  (MLflow's basic-auth app needs it for CSRF checks)
    except ImportError:
        raise AvserError("an MLflow server beyond loopback runs MLflow's basic-auth app, which "
                         "needs `pip install 'mlflow[auth]'` (Flask-WTF); or bind it to "
                         "127.0.0.1 and reach it through an SSH tunnel") from None


def client_env(folder: Path, state: ServerState) -> dict[str, str]:
    """What a client (a job, a worker, `mlflow ui` users) needs to log to the server."""
    env = {"MLFLOW_TRACKING_URI": state.uri}
    if state.auth:
        env.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=_password(folder))
    return env


def start_server(folder: Path, host: str = "127.0.0.1", port: int = 0,
                 backend_uri: str | None = None, artifacts: str | None = None,
                 out=sys.stdout) -> ServerState:
    running = read_state(folder)
    if running is not None and session_pids(running.sid):
        print(f"already up at {running.uri}", file=out)
        return running
    port = port or pick_ports(host, ("mlflow",), 0)[0]["mlflow"]
    backend_uri = backend_uri or f"sqlite:///{folder / 'mlflow.db'}"
    artifacts = artifacts or str(folder / "artifacts")
    auth = not is_loopback(host)
    if auth:
        _check_auth_app()
    args = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", host,
            "--port", str(port), "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts, "--workers", "1"]
    env = {**os.environ}
    if auth:
        args += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(_auth_config(folder)),
                   MLFLOW_AUTH_ADMIN_PASSWORD=_password(folder),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=_password(folder, SECRET_KEY_FILE))
    print(f"starting MLflow server: {' '.join(args)}", file=out, flush=True)
    with (folder / LOG_FILE).open("w") as log:
        process = subprocess.Popen(args, cwd=folder, env=env, stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    state = ServerState(host, port, backend_uri, artifacts, process.pid, auth)
    deadline = time.monotonic() + START_WAIT_SECONDS
    while http_status(f"{state.uri}/health") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_session(process.pid)
            tail = "\n".join((folder / LOG_FILE).read_text().splitlines()[-20:])
            raise AvserError(f"the MLflow server did not come up at {state.uri}; its log "
                             f"({folder / LOG_FILE}):\n{tail}")
        time.sleep(0.5)
    (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
    return state


def stop_server(folder: Path, out=sys.stdout) -> bool:
    state = read_state(folder)
    if state is None:
        print(f"no MLflow server in {folder}", file=out)
        return False
    if session_pids(state.sid):
        stop_session(state.sid)
    (folder / STATE_FILE).unlink()
    print(f"stopped the MLflow server at {state.uri} (its store stays in {state.backend_uri})", file=out)
    return True


def server_status(folder: Path, out=sys.stdout) -> int:
    state = read_state(folder)
    if state is None or not session_pids(state.sid):
        print(f"no MLflow server running (state folder {folder})", file=out)
        return 3
    health = http_status(f"{state.uri}/health")
    print(f"MLflow server {state.uri}: health HTTP {health}; backend {state.backend_uri}; "
          f"artifacts {state.artifacts}; basic auth {'on' if state.auth else 'off (loopback)'}",
          file=out)
    return 0 if health == 200 else 1


def check_cluster_uri(uri: str, n_nodes: int) -> None:
    """A cluster of several nodes must log to a server: a file or SQLite store
    would be a different file on every node (or one file shared unsafely)."""
    if n_nodes > 1 and not uri.startswith(("http://", "https://", "databricks")):
        raise AvserError(
            f"MLFLOW_TRACKING_URI={uri or '(unset)'} on a cluster of {n_nodes} nodes: the nodes "
            "need an MLflow server. Start one on the head with `avser mlflow up --host "
            "<head address>` and pass its URI to `avser cluster up --mlflow-uri`")
