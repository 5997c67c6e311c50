"""``tokennorm.patch(model)``: swap a model's LayerNorm / RMSNorm modules for tokennorm's (see :mod:`.recognize`)."""

from tokennorm.patching.recognize import (
    DTYPE_RULES, NORMS, Left, PatchedLayerNorm, PatchedOffsetNorm, PatchedRMSNorm, PatchReport, Replaced, patch,
    patch_report, unpatch,
)

__all__ = [
    "NORMS", "DTYPE_RULES", "Replaced", "Left", "PatchReport", "PatchedLayerNorm", "PatchedRMSNorm",
    "PatchedOffsetNorm", "patch", "unpatch", "patch_report",
]
