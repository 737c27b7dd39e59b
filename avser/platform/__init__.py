"""The Ray layer: the only code that imports ray or mlflow."""

import os
from pathlib import Path

# Ray Data logs plans and progress at INFO: to its log file, not the console.
# Read when ray.data is imported; local Ray workers inherit it from the driver.
os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
# Tune's console: our one line per trial (avser.platform.console.TrialTable).
# Tune's newer output engine prints its experiment box even at verbose=0; the
# classic one is silent there. Results and logs still go to Ray's folders.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Each in-trial epoch checkpoints through Tune with num_to_keep=2, which forces
# an experiment-state snapshot (cheap: ~10 ms) every other epoch, as intended for
# exact resumption; Tune warns about that frequency on every snapshot.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# MLflow draws a progress bar for every artifact it downloads (one small file each).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

if not os.environ.get("RAY_ADDRESS"):
    # A local Ray (no cluster address) must stay on loopback: without this Ray
    # takes the machine's interface address and listens on it (DESIGN.md,
    # "Ray on one machine"). Set before any avser.platform module imports ray,
    # because Ray reads it once at import.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
