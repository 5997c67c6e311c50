"""What one :func:`tokennorm.patch` call did: the modules it replaced, and those it left (and why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Replaced:
    """A module that ``patch`` replaced: where, what it was, what it became, and the math it was proven to do.

    ``other_paths`` are further paths of the same (shared) module; ``dtype_rule`` is the output dtype rule
    the probe found (see :data:`~tokennorm.patching.replacements.DTYPE_RULES`)."""

    path: str
    from_class: str
    to_class: str
    kind: str
    eps: Optional[float]
    other_paths: tuple[str, ...] = ()
    dtype_rule: str = "input"


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
            rule = f", output dtype: {r.dtype_rule}" if r.dtype_rule != "input" else ""
            lines.append(f"  {r.path}{also}: {r.from_class} -> {r.to_class} ({r.kind}, eps={r.eps}{rule})")
        lines += [f"  left {x.path}: {x.cls}: {x.reason}" for x in self.left]
        return "\n".join(lines)
