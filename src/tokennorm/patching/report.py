"""What one :func:`tokennorm.patch` call did: the modules it replaced, and those it left (and why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Replaced:
    """A module that ``patch`` replaced: where, what it was, what it became, and the math it was proven to do.

    ``other_paths`` are further paths of the same (shared) module; ``dtype_rule`` is the output dtype rule
    the probe found (see :data:`~tokennorm.patching.replacements.DTYPE_RULES`); ``cast_parameters``: the
    replacement casts weight and bias to float32 (float64 for a float64 input) first, as the original did."""

    path: str
    from_class: str
    to_class: str
    kind: str
    eps: Optional[float]
    other_paths: tuple[str, ...] = ()
    dtype_rule: str = "input"
    cast_parameters: bool = False

    @property
    def dtypes(self) -> str:
        """The dtype behaviour kept from the original, in words: ``input``, ``promote; parameters → float32``."""
        return self.dtype_rule + ("; parameters → float32" if self.cast_parameters else "")


@dataclass(frozen=True)
class Left:
    """A norm-like module that ``patch`` left as it was, and why."""

    path: str
    cls: str
    reason: str


@dataclass(frozen=True)
class PatchReport:
    """What one :func:`patch` call replaced and what it left (and why)."""

    replaced: tuple[Replaced, ...] = ()
    left: tuple[Left, ...] = ()

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)}, left {len(self.left)}"]
        for r in self.replaced:
            also = f" (also {', '.join(r.other_paths)})" if r.other_paths else ""
            rule = f", output dtype: {r.dtypes}" if r.dtypes != "input" else ""
            lines.append(f"  {r.path}{also}: {r.from_class} -> {r.to_class} ({r.kind}, eps={r.eps}{rule})")
        lines += [f"  left {x.path}: {x.cls}: {x.reason}" for x in self.left]
        return "\n".join(lines)
