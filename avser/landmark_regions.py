"""The 68-point landmark layout (iBUG 300-W / OpenFace) and its 7 regions.

Shared by the feature extraction (:mod:`avser.features.faces`) and the AGRUs
(:mod:`avser.models.agru`), which must split the landmarks the same way.
"""

from __future__ import annotations

from types import MappingProxyType

N_LANDMARKS = 68
# The 7 regions of the 68-point scheme (0-based, end exclusive), in the
# order the AGRUs are built; together they cover 0..67 exactly once.
# In image terms "right" is the subject's right, on the left of an unmirrored image.
REGIONS = MappingProxyType(
    {
        "jaw": slice(0, 17),
        "right_brow": slice(17, 22),
        "left_brow": slice(22, 27),
        "nose": slice(27, 36),
        "right_eye": slice(36, 42),
        "left_eye": slice(42, 48),
        "mouth": slice(48, 68),
    }
)
