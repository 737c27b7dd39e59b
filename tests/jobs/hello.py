"""Fixture job for tests/test_local_cluster.py: the driver joins the cluster
and runs one remote task, so a submitted job exercises the whole path."""

import os

import ray


@ray.remote
def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    ray.init()
    node_ip = ray.util.get_node_ip_address()
    print(f"avser hello: square(7)={ray.get(square.remote(7))} node_ip={node_ip} "
          f"mlflow={os.environ.get('MLFLOW_TRACKING_URI', '')}", flush=True)
