"""Import timm on machines where torchvision's C++ ops cannot load.

PyPI's torchvision 0.28.0 wheel is a CUDA build: next to the CPU build of
torch 2.13.0 its ``_C`` extension fails to load (it links libtorch_cuda), and
torchvision then dies at import because ``_meta_registrations`` registers fake
kernels for ``torchvision::nms``/``qnms`` without checking that the ops exist.
timm imports torchvision, so EfficientNet would be unusable. We only need
torchvision's pure-Python parts; declaring the two op schemas (no kernels)
lets the import finish. Calling nms would still fail loudly, as it should.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

import torch

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _torchvision_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to patch, the import error will say so
    from pathlib import Path

    lib = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if lib is None:
        return False
    try:
        torch.ops.load_library(str(lib))
    except (OSError, RuntimeError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def import_timm() -> ModuleType:
    """``import timm``, declaring torchvision's op schemas first when needed."""
    if not _torchvision_ops_load():
        library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPS:
            library.define(schema)
        # Keep the Library object alive for the life of the process: the schema
        # registration is dropped when it is garbage collected.
        import_timm.library = library  # type: ignore[attr-defined]
    import timm

    return timm
