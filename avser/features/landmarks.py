"""68-point facial landmarks per frame, from one of three backends.

- ``openface-csv``: landmarks OpenFace 2.0 already wrote (the paper's tool);
- ``openface``: runs OpenFace's ``FeatureExtraction`` binary, then reads its CSV;
- ``dlib``: offline, dlib's HOG face detector and 68-point shape predictor,
  detecting now and then and following the face from its landmarks between.

Every backend returns a :class:`LandmarkTrack` aligned with the frames it was
given, in those frames' pixel coordinates. The types every
backend shares are in :mod:`avser.features.landmark_track` (re-exported here);
the backends live in :mod:`avser.features.openface` and
:mod:`avser.features.dlib_tracking`; this module is the factory.
"""

from __future__ import annotations

from avser.errors import BackendUnavailableError
from avser.features.config import LANDMARK_BACKENDS, LandmarkConfig
from avser.features.dlib_tracking import DlibBackend, dlib_model_path
from avser.features.landmark_track import FramesLike, LandmarkBackend, LandmarkTrack, require_face
from avser.features.openface import OpenFaceBinaryBackend, OpenFaceCSVBackend, read_openface_csv
from avser.landmark_regions import N_LANDMARKS

BACKENDS = LANDMARK_BACKENDS

__all__ = [
    "BACKENDS", "N_LANDMARKS", "DlibBackend", "FramesLike", "LandmarkBackend", "LandmarkTrack",
    "OpenFaceBinaryBackend", "OpenFaceCSVBackend", "dlib_model_path", "make_landmark_backend",
    "read_openface_csv", "require_face",
]


def make_landmark_backend(cfg: LandmarkConfig | None = None) -> LandmarkBackend:
    """The backend ``cfg.backend`` names (models loaded once, here)."""
    cfg = cfg or LandmarkConfig()
    makers = {"dlib": DlibBackend, "openface-csv": OpenFaceCSVBackend,
              "openface": OpenFaceBinaryBackend}
    if cfg.backend not in makers:
        raise BackendUnavailableError(
            f"unknown landmark backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    return makers[cfg.backend](cfg)
