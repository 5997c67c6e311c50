"""What an audit found: one :class:`Measurement` per method, a :class:`Finding` per check and mode, the
:class:`AuditReport` (with its JSON form)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # the command line imports this module to list the checks, before torch is loaded
    import torch
    from torch import Tensor

CHECKS = ("future", "cross_batch", "padding", "condition")
MODES = ("train", "eval")

# What a pinpoint (a, b) means, per check and method.
WHERE = {
    ("future", "autograd"): "(output t, input s > t)",
    ("future", "perturbation"): "(output t, input s > t)",
    ("cross_batch", "autograd"): "(item i, other item j it depends on)",
    ("cross_batch", "perturbation"): "(item i, other item j it depends on)",
    ("padding", "autograd"): "(item, PAD position) that reaches non-PAD outputs",
    ("padding", "perturbation"): "(item, non-PAD position) whose output moved",
    ("condition", "autograd"): "(item i, other item j whose condition it depends on)",
    ("condition", "perturbation"): "(item i, other item j whose condition it depends on)",
}
MAX_WHERE = 10  # pinpoints kept per measurement, strongest first


@dataclass
class Measurement:
    """One method's result for one check: the largest relative leak and where it is.

    ``where`` holds up to ten pinpoints ``(a, b)``, strongest first (their meaning: :data:`WHERE`); ``count``
    is how many of the ``checked`` forbidden pairs that this method measured exceed the tolerance.
    """

    method: str
    magnitude: float
    count: int
    where: list[tuple[int, int]]
    checked: int = 0


@dataclass
class ModuleLeak:
    """A module whose output shows a finding's forbidden dependence (measured by perturbation): its qualified
    name in the model (``<model>`` for the model's own forward), class, relative magnitude and strongest
    pinpoint."""

    name: str
    type: str
    magnitude: float
    where: Optional[tuple[int, int]]


@dataclass
class Finding:
    """The result of one check in one mode, by autograd and by perturbation; for a leak, the modules whose
    output shows it, in execution order (``modules[0]``: where it enters; empty when not attributed)."""

    mode: str
    check: str
    autograd: Measurement
    perturbation: Measurement
    tol: float
    modules: list[ModuleLeak] = field(default_factory=list)

    @property
    def first_module(self) -> Optional[ModuleLeak]:
        """The first module, in execution order, whose output shows the leak."""
        return self.modules[0] if self.modules else None

    @property
    def leaks(self) -> bool:
        """True when either method measured dependence above the tolerance."""
        return self.autograd.magnitude > self.tol or self.perturbation.magnitude > self.tol

    @property
    def agree(self) -> bool:
        """True when both methods reach the same verdict."""
        return (self.autograd.magnitude > self.tol) == (self.perturbation.magnitude > self.tol)


@dataclass
class ConditionInfo:
    """The per-item condition an audit gave the model: the keyword, shape, dtype and (small integer ones)
    values, and per mode how strongly the weakest item's output depends on its *own* condition, relative to the
    strongest condition dependence (0: the model ignores its condition, and the ``condition`` check is vacuous)."""

    arg: str
    shape: tuple[int, ...]
    dtype: str
    values: Optional[list[int]]
    own: dict[str, float]


@dataclass
class AuditReport:
    """Everything :func:`audit` measured.

    ``matrices[mode]["autograd"]`` is the relative token-to-token dependence [N, N] (row t: output position,
    column s: input position, aggregated over batch items); rows that were not computed are NaN.
    ``matrices[mode]["perturbation"]`` is the same from perturbing one input column at a time; NaN columns
    were not perturbed.
    """

    findings: list[Finding]
    matrices: dict[str, dict[str, Tensor]]
    shape: tuple[int, ...]
    dtype: torch.dtype
    token_ids: bool
    causal: bool
    tol: float
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    model_name: str = ""
    condition: Optional[ConditionInfo] = None
    nonfinite: dict[str, int] = field(default_factory=dict)  # mode -> output positions NaN/inf unperturbed

    @property
    def leaks(self) -> bool:
        """True when any finding leaks."""
        return any(f.leaks for f in self.findings)

    def finding(self, mode: str, check: str) -> Finding:
        """The finding for ``check`` in ``mode``; KeyError when that check did not run."""
        for f in self.findings:
            if f.mode == mode and f.check == check:
                return f
        raise KeyError(f"no finding for mode={mode!r}, check={check!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN → null, ∞ → "inf"; matrices with 4 significant digits)."""
        return {
            "model": self.model_name,
            "input": {
                "shape": list(self.shape),
                "dtype": str(self.dtype).removeprefix("torch."),
                "token_ids": self.token_ids,
            },
            "causal": self.causal,
            "tol": self.tol,
            "leaks": self.leaks,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "nonfinite_outputs": self.nonfinite,
            "condition": None
            if self.condition is None
            else {
                "arg": self.condition.arg,
                "shape": list(self.condition.shape),
                "dtype": self.condition.dtype,
                "values": self.condition.values,
                "own": {m: _json_float(v) for m, v in self.condition.own.items()},
            },
            "findings": [
                {
                    "mode": f.mode,
                    "check": f.check,
                    "leaks": f.leaks,
                    "agree": f.agree,
                    **{
                        m.method: {
                            "magnitude": _json_float(m.magnitude),
                            "count": m.count,
                            "checked": m.checked,
                            "where": [list(w) for w in m.where],
                            "where_means": WHERE[(f.check, m.method)],
                        }
                        for m in (f.autograd, f.perturbation)
                    },
                    "modules": [
                        {
                            "name": m.name,
                            "type": m.type,
                            "magnitude": _json_float(m.magnitude),
                            "where": list(m.where) if m.where else None,
                        }
                        for m in f.modules
                    ],
                }
                for f in self.findings
            ],
            "matrices": {
                mode: {method: [[_json_float(v) for v in row] for row in m.tolist()] for method, m in ms.items()}
                for mode, ms in self.matrices.items()
            },
        }


def _json_float(v: float) -> Union[float, str, None]:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf"
    return float(f"{v:.4g}")
