"""Connecting to Ray: a cluster when one is given, else a local one on loopback."""

from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"


def init_ray(num_cpus: int | None = None, quiet: bool = True) -> None:
    """``ray.init`` once per process.

    Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) this joins that
    cluster; otherwise it starts a local Ray bound to 127.0.0.1 (see
    ``avser/platform/__init__.py``).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=not quiet)
        _check_tracking_store()
    else:
        _init_local(num_cpus, quiet)
    from avser.platform.console import print_ray_log_folder, quiet_ray_data

    quiet_ray_data()
    print_ray_log_folder()


def alive_nodes() -> int:
    """How many nodes the connected Ray cluster has alive."""
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def _check_tracking_store() -> None:
    """Refuse a file or SQLite MLflow store on a cluster of several nodes."""
    from avser.platform.mlflow_server import check_cluster_uri
    from avser.platform.tracking import tracking_uri

    check_cluster_uri(tracking_uri(), alive_nodes())


def _init_local(num_cpus: int | None, quiet: bool) -> None:
    import ray

    # The dashboard (on 127.0.0.1) also serves the state API, which Ray Train's
    # PlacementGroupCleaner needs to free a stopped run's CPUs: without it a
    # trial that Tune stops early keeps its workers' resources for ever.
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
             log_to_driver=not quiet)
