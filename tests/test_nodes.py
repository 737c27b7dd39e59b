"""avser.platform.nodes without starting Ray: the checks `avser cluster` makes."""

from __future__ import annotations

import os
import random
import socket
import stat

import pytest

from avser.errors import AvserError
from avser.platform import nodes
from avser.platform.node_status import Socket, exposed
from avser.platform.nodes import NodeState


def test_the_temp_parent_is_made_private_and_must_be_ours(tmp_path, monkeypatch) -> None:
    folder = nodes.private_dir(tmp_path / "ray")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o777)
    nodes.private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(AvserError, match="not a plain folder"):
        nodes.private_dir(link)
    monkeypatch.setattr(os, "getuid", lambda: folder.stat().st_uid + 1)
    with pytest.raises(AvserError, match="belongs to uid"):
        nodes.private_dir(folder)


def test_a_head_makes_its_token_and_a_worker_needs_one(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(nodes.TOKEN_ENV, raising=False)
    with pytest.raises(AvserError, match="copy the head's token file"):
        nodes.token_file(tmp_path, None, create=False)
    path = nodes.token_file(tmp_path, None, create=True)
    assert len(path.read_text()) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert nodes.token_file(tmp_path, None, create=True).read_text() == path.read_text()  # kept
    other = tmp_path / "elsewhere"
    other.write_text("t0ken")
    monkeypatch.setenv(nodes.TOKEN_ENV, str(other))
    assert nodes.token_file(tmp_path, None, create=False) == other


def test_ports_are_free_consecutive_and_fixed_ones_kept() -> None:
    ports, workers = nodes.pick_ports("127.0.0.1", nodes.SERVICES, 8, rng=random.Random(0))
    assert set(ports) == set(nodes.SERVICES)
    block = sorted(ports.values())
    assert block == list(range(block[0], block[0] + len(block)))
    assert workers == (block[-1] + 1, block[-1] + 8)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(AvserError, match="in use"):
            nodes.pick_ports("127.0.0.1", nodes.SERVICES, 0, {"gcs": taken.getsockname()[1]})


def test_every_service_binds_to_the_node_address() -> None:
    ports = {name: 20000 + i for i, name in enumerate(nodes.SERVICES)}
    head = nodes.start_args(nodes.HEAD, "10.0.0.1", ports, (21000, 21010), nodes.Path("/t"), None, 2)
    assert "--node-ip-address=10.0.0.1" in head and "--dashboard-host=10.0.0.1" in head
    assert "--min-worker-port=21000" in head and "--num-cpus=2" in head
    worker = nodes.start_args(nodes.WORKER, "10.0.0.2", ports, None, nodes.Path("/t"), "10.0.0.1:20000", None)
    assert "--address=10.0.0.1:20000" in worker and "--head" not in worker
    assert not any("token" in arg for arg in head + worker)


def test_sockets_beyond_loopback_and_the_node_address_are_exposed() -> None:
    sockets = [Socket("127.0.0.1:1", 1), Socket("10.0.0.1:2", 1), Socket("[::ffff:10.0.0.1]:3", 1),
               Socket("0.0.0.0:4", 1), Socket("192.168.1.5:5", 1)]
    alone = {"127.0.0.1", "10.0.0.1"}
    assert exposed(sockets, "10.0.0.1", alone) == [sockets[4]]
    # Bound to every interface: exposed where the namespace has another address.
    assert exposed(sockets, "10.0.0.1", alone | {"192.168.1.5"}) == sockets[3:]


def test_env_lines_point_ray_at_the_cluster(tmp_path) -> None:
    state = NodeState(nodes.HEAD, "10.0.0.1", "10.0.0.1:6379", 5, "/s", "/t", str(tmp_path / "tok"),
                      {"dashboard": 8265}, None, "http://10.0.0.1:5000", "/shared/avser")
    assert nodes.env_lines(state) == [
        "export RAY_API_SERVER_ADDRESS=http://10.0.0.1:8265", "export RAY_ADDRESS=10.0.0.1:6379",
        "export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN_PATH={tmp_path / 'tok'}",
        "export MLFLOW_TRACKING_URI=http://10.0.0.1:5000", "export AVSER_STORAGE_ROOT=/shared/avser"]
    # The jobs of the cluster inherit both through the environment Ray starts with.
    env = nodes.ray_env(tmp_path / "tok", "127.0.0.1", nodes.jobs_env(state.mlflow_uri, state.storage_root))
    assert env["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000" and env["AVSER_STORAGE_ROOT"] == "/shared/avser"
    nodes.write_state(tmp_path, state)
    assert nodes.read_state(tmp_path) == state
    assert not nodes.is_running(state)  # session 5 is not this node's


def test_a_cluster_of_several_nodes_needs_an_mlflow_server() -> None:
    from avser.platform.mlflow_server import check_cluster_uri

    check_cluster_uri("sqlite:///mlruns/mlflow.db", n_nodes=1)  # one machine: a file is fine
    check_cluster_uri("http://10.0.0.1:5000", n_nodes=2)
    for uri in ("sqlite:///mlruns/mlflow.db", "file:///tmp/mlruns", ""):
        with pytest.raises(AvserError, match="avser mlflow up"):
            check_cluster_uri(uri, n_nodes=2)


def test_an_mlflow_server_beyond_loopback_needs_the_auth_app(tmp_path, monkeypatch) -> None:
    import builtins

    from avser.platform import mlflow_server

    real_import = builtins.__import__

    def no_flask_wtf(name, *args, **kwargs):
        if name == "flask_wtf":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flask_wtf)
    with pytest.raises(AvserError, match="mlflow\\[auth\\]"):
        mlflow_server.start_server(tmp_path, host="10.0.0.1", port=5000)


@pytest.mark.slow
def test_the_mlflow_server_takes_runs_and_artifacts_and_stops(tmp_path) -> None:
    import mlflow

    from avser.platform import mlflow_server

    state = mlflow_server.start_server(tmp_path)
    try:
        assert mlflow_server.server_status(tmp_path) == 0 and not state.auth
        client = mlflow.MlflowClient(state.uri)
        run = client.create_run(client.create_experiment("server"))
        client.log_metric(run.info.run_id, "val_ua", 0.5)
        client.log_text(run.info.run_id, "hello", "note.txt")
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        assert any((tmp_path / "artifacts").rglob("note.txt"))  # proxied into the artifact root
    finally:
        assert mlflow_server.stop_server(tmp_path)
    assert mlflow_server.server_status(tmp_path) == 3
