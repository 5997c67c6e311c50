"""``tokennorm audit``: does a model's output at one token depend on tokens it must not see? Measured.

Modules: :mod:`~tokennorm.tools.audit.measure` (:func:`audit`, the two methods and the threshold),
:mod:`~tokennorm.tools.audit.subject` (any model seen as x [B, N, C] → y [B, N, F]),
:mod:`~tokennorm.tools.audit.report` (what was found), :mod:`~tokennorm.tools.audit.demos` (the built-in causal
decoder with five norms, one class-conditional), :mod:`~tokennorm.tools.audit.heatmap` (the dependency matrices
as a figure) and :mod:`~tokennorm.tools.audit.cli` (the command). The names below are imported on first use.
"""

from typing import TYPE_CHECKING

from tokennorm._lazy import lazy_exports

if TYPE_CHECKING:
    from tokennorm.tools.audit.demos import DEMOS, demo_condition, demo_inputs, demo_model
    from tokennorm.tools.audit.heatmap import dependency_figure, plot_dependency
    from tokennorm.tools.audit.measure import audit, default_tol
    from tokennorm.tools.audit.report import (
        CHECKS,
        MODES,
        AuditReport,
        ConditionInfo,
        Finding,
        Measurement,
        ModuleLeak,
    )

__all__ = [
    "audit",
    "default_tol",
    "AuditReport",
    "Finding",
    "Measurement",
    "ModuleLeak",
    "ConditionInfo",
    "CHECKS",
    "MODES",
    "DEMOS",
    "demo_model",
    "demo_inputs",
    "demo_condition",
    "plot_dependency",
    "dependency_figure",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("audit", "default_tol"), "tokennorm.tools.audit.measure"),
        **dict.fromkeys(
            ("AuditReport", "Finding", "Measurement", "ModuleLeak", "ConditionInfo", "CHECKS", "MODES"),
            "tokennorm.tools.audit.report",
        ),
        **dict.fromkeys(("DEMOS", "demo_model", "demo_inputs", "demo_condition"), "tokennorm.tools.audit.demos"),
        **dict.fromkeys(("plot_dependency", "dependency_figure"), "tokennorm.tools.audit.heatmap"),
    },
)
