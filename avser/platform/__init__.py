"""The Ray layer: the only code that imports ray or mlflow."""

import os

if not os.environ.get("RAY_ADDRESS"):
    # A local Ray (no cluster address) must stay on loopback: without this Ray
    # takes the machine's interface address and listens on it (DESIGN.md,
    # "Ray on one machine"). Set before any avser.platform module imports ray,
    # because Ray reads it once at import.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
