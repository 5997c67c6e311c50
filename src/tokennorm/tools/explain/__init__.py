"""``tokennorm explain``: which elements share statistics under each norm, and LayerNorm step by step.

Modules: :mod:`~tokennorm.tools.explain.groups` (the statistics groups of LayerNorm, RMSNorm, BatchNorm,
InstanceNorm and GroupNorm on [B, N, C], and of channels-first LayerNorm, BatchNorm2d, InstanceNorm2d and GroupNorm
on [B, C, H, W], checked against torch; DyT has none), :mod:`~tokennorm.tools.explain.figures` (grids, cubes and
image tiles), :mod:`~tokennorm.tools.explain.steps` (LayerNorm's arithmetic token by token, beside torch),
:mod:`~tokennorm.tools.explain.pitfalls` (the classic mistakes as functions, and what each costs) and
:mod:`~tokennorm.tools.explain.cli` (the command). The names below are imported on first use.
"""

from typing import TYPE_CHECKING

from tokennorm._lazy import lazy_exports

if TYPE_CHECKING:
    from tokennorm.tools.explain.figures import draw_cube, draw_groups, draw_image_groups
    from tokennorm.tools.explain.groups import (
        IMAGE_NORMS,
        NORM_TITLES,
        NORMS,
        normalize_by_groups,
        stat_groups,
        torch_norm,
    )
    from tokennorm.tools.explain.steps import PitfallError, Walkthrough, walkthrough

__all__ = [
    "NORMS",
    "IMAGE_NORMS",
    "NORM_TITLES",
    "stat_groups",
    "normalize_by_groups",
    "torch_norm",
    "draw_groups",
    "draw_cube",
    "draw_image_groups",
    "Walkthrough",
    "PitfallError",
    "walkthrough",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("NORMS", "IMAGE_NORMS", "NORM_TITLES", "stat_groups", "normalize_by_groups", "torch_norm"),
            "tokennorm.tools.explain.groups",
        ),
        **dict.fromkeys(("draw_groups", "draw_cube", "draw_image_groups"), "tokennorm.tools.explain.figures"),
        **dict.fromkeys(("Walkthrough", "PitfallError", "walkthrough"), "tokennorm.tools.explain.steps"),
    },
)
