"""Fixture job for tests/test_local_cluster.py: the driver joins the cluster,
runs one remote task, and says where the avser code it sees came from (the
uploaded working_dir, not the checkout the job was submitted from)."""

import importlib.util
import os

import ray


@ray.remote
def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    ray.init()
    print(f"avser hello: square(7)={ray.get(square.remote(7))} "
          f"node_ip={ray.util.get_node_ip_address()}", flush=True)
    print(f"avser hello: mlflow={os.environ.get('MLFLOW_TRACKING_URI', '')}", flush=True)
    # find_spec imports only the light top-level package, not avser.data itself.
    print(f"avser hello: avser.data from {importlib.util.find_spec('avser.data').origin}", flush=True)
