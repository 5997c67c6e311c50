"""``tokennorm verify``: every op, forward and backward, in every dtype, against the float64 reference.

Modules: :mod:`~tokennorm.tools.verify.cases` (the ops and shapes checked), :mod:`~tokennorm.tools.verify.tolerance`
(when a check passes, and why), :mod:`~tokennorm.tools.verify.checks` (running one op against the reference),
:mod:`~tokennorm.tools.verify.report` (table and JSON) and :mod:`~tokennorm.tools.verify.cli` (the command).
The names below are imported on first use.
"""

from typing import TYPE_CHECKING

from tokennorm._lazy import lazy_exports

if TYPE_CHECKING:
    from tokennorm.tools.verify.cases import CASES, OPS, QUICK_CASES, Case, Op
    from tokennorm.tools.verify.checks import Check, check_op, run_checks, supported_dtypes
    from tokennorm.tools.verify.tolerance import ROUNDOFFS, tolerance

__all__ = [
    "run_checks",
    "check_op",
    "supported_dtypes",
    "Check",
    "Op",
    "OPS",
    "Case",
    "CASES",
    "QUICK_CASES",
    "tolerance",
    "ROUNDOFFS",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("Op", "OPS", "Case", "CASES", "QUICK_CASES"), "tokennorm.tools.verify.cases"),
        **dict.fromkeys(("Check", "check_op", "run_checks", "supported_dtypes"), "tokennorm.tools.verify.checks"),
        **dict.fromkeys(("tolerance", "ROUNDOFFS"), "tokennorm.tools.verify.tolerance"),
    },
)
