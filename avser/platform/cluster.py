"""Connecting to Ray: a cluster when one is given, else a local one on loopback."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, quiet: bool = True) -> None:
    """``ray.init`` once per process.

    Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) this joins that
    cluster; otherwise it starts a local Ray without the dashboard, bound to
    127.0.0.1 (see ``avser/platform/__init__.py``).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=not quiet)
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet)
