"""``tokennorm verify``: check every op, forward and backward, against the float64 reference on this machine.

Each op runs through tokennorm's public functions (:mod:`tokennorm.functional`) with the chosen backend, in every
dtype the device supports, over a spread of shapes (:mod:`~tokennorm.tools.verify.cases`); its outputs and its
gradients (of input, weight, bias, residual) are compared with :mod:`tokennorm.reference` evaluated in float64 on
the float64 upcast of the very same inputs (the backward from the reference's explicit ``*_backward`` formulas,
not autograd). A check passes within :func:`~tokennorm.tools.verify.tolerance.tolerance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from tokennorm import reference
from tokennorm.tools.verify.cases import DIRECTIONS, LAYER_NORM_EPS, OPS, Case, Op
from tokennorm.tools.verify.tolerance import term_magnitudes, tolerance


@dataclass
class Inputs:
    """The tensors of one check, on the CPU in the dtype under test (None where the op takes none)."""

    x: Tensor
    residual: Optional[Tensor]
    weight: Tensor
    bias: Optional[Tensor]
    dy: Tensor
    dh: Optional[Tensor]


@dataclass
class Check:
    """One compared tensor: an output (y, h) or a gradient (dx, dweight, dbias, dresidual) of one op."""

    op: str
    direction: str
    dtype: str
    shape: list[int]
    normalized_shape: list[int]
    scale: float
    tensor: str
    max_abs_error: Optional[float]
    max_abs_reference: Optional[float]
    max_rel_error: Optional[float]  # max_abs_error / max_abs_reference
    term_magnitude: Optional[float]  # S in the tolerance k·u·S
    tolerance: float
    passed: bool
    error: Optional[str] = None  # the exception, when the op raised

    @property
    def ratio(self) -> float:
        """Error over tolerance: ≤ 1 passes; inf for a raised op or a non-finite output."""
        if self.max_abs_error is None or (not self.passed and not math.isfinite(self.max_abs_error)):
            return math.inf
        return self.max_abs_error / self.tolerance


def make_inputs(op: Op, case: Case, dtype: torch.dtype, seed: int) -> Inputs:
    """Seeded inputs: tokens ``σ · (z + m)`` with z ~ N(0, 1) and a per-token offset m ~ N(0, 1).

    Everything is drawn in float64 in a fixed order (x is the same for every op) and rounded to ``dtype`` once.
    """
    g = torch.Generator().manual_seed(seed)
    ns = case.normalized_shape
    token_shape = case.shape[: len(case.shape) - len(ns)] + (1,) * len(ns)

    def randn(shape) -> Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64)

    x = case.scale * (randn(case.shape) + randn(token_shape))
    residual = case.scale * (randn(case.shape) + randn(token_shape))
    weight = 1.0 + 0.1 * randn(ns)
    bias = 0.1 * randn(ns)
    dy, dh = randn(case.shape), randn(case.shape)
    return Inputs(
        x=x.to(dtype),
        residual=residual.to(dtype) if op.add else None,
        weight=weight.to(dtype),
        bias=bias.to(dtype) if op.norm == "layernorm" else None,
        dy=dy.to(dtype),
        dh=dh.to(dtype) if op.prenorm else None,
    )


def _run_tokennorm(op: Op, inp: Inputs, ns: tuple[int, ...], device: str) -> tuple[dict, dict]:
    """Outputs and gradients from tokennorm's public functions, as float64 CPU tensors."""
    from tokennorm import functional  # looked up at call time, so a patched function is the one checked

    leaves = {
        name: t.to(device, copy=True).requires_grad_()
        for name, t in (("x", inp.x), ("residual", inp.residual), ("weight", inp.weight), ("bias", inp.bias))
        if t is not None
    }
    x, w, b, r = leaves["x"], leaves["weight"], leaves.get("bias"), leaves.get("residual")
    if op.add:
        eps = LAYER_NORM_EPS if op.norm == "layernorm" else None
        out = functional.add_norm(x, r, w, b, eps, norm=op.norm, prenorm=op.prenorm, normalized_shape=ns)
        outs = {"y": out[0], "h": out[1]} if op.prenorm else {"y": out}
    elif op.norm == "layernorm":
        outs = {"y": functional.layer_norm(x, ns, w, b, LAYER_NORM_EPS)}
    else:
        outs = {"y": functional.rms_norm(x, ns, w)}
    for name, t in outs.items():  # a drop-in returns the input's dtype and shape
        if t.dtype != inp.x.dtype or t.shape != inp.x.shape:
            raise TypeError(
                f"{name} is {t.dtype} of shape {list(t.shape)}, expected {inp.x.dtype} of shape {list(inp.x.shape)}"
            )
    upstream = [inp.dy.to(device)] + ([inp.dh.to(device)] if "h" in outs else [])
    torch.autograd.backward(list(outs.values()), upstream)
    as64 = {name: t.detach().cpu().double() for name, t in outs.items()}
    grads = {"d" + name: leaf.grad.cpu().double() for name, leaf in leaves.items()}
    return as64, grads


def _run_reference(op: Op, inp: Inputs, ns: tuple[int, ...], dtype: torch.dtype) -> tuple[dict, dict]:
    """The same outputs and gradients from :mod:`tokennorm.reference` on the float64 upcast of the inputs."""
    x, r, w, b, dy, dh = (
        None if t is None else t.double() for t in (inp.x, inp.residual, inp.weight, inp.bias, inp.dy, inp.dh)
    )
    # eps=None means the default of the dtype under test (fp32's epsilon for bf16/fp16/fp32), not float64's.
    eps = LAYER_NORM_EPS if op.norm == "layernorm" else reference.default_rms_eps(dtype)
    if op.add:
        y, h = reference.add_norm(x, r, ns, w, b, eps, norm=op.norm)
        g = reference.add_norm_backward(dy, dh, h, x, r, ns, w, b, eps, norm=op.norm)
        outs = {"y": y, "h": h} if op.prenorm else {"y": y}
        return outs, {"dx": g.dx, "dresidual": g.dresidual, "dweight": g.dweight, "dbias": g.dbias}
    if op.norm == "layernorm":
        g = reference.layer_norm_backward(dy, x, ns, w, b, eps)
        return {"y": reference.layer_norm(x, ns, w, b, eps)}, {"dx": g.dx, "dweight": g.dweight, "dbias": g.dbias}
    g = reference.rms_norm_backward(dy, x, ns, w, eps)
    return {"y": reference.rms_norm(x, ns, w, eps)}, {"dx": g.dx, "dweight": g.dweight}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def check_op(op: Op, case: Case, dtype: torch.dtype, device: str, seed: int) -> list[Check]:
    """Every output and gradient of ``op`` on ``case`` in ``dtype``, compared with the float64 reference."""
    base = dict(
        op=op.name,
        dtype=dtype_name(dtype),
        shape=list(case.shape),
        normalized_shape=list(case.normalized_shape),
        scale=case.scale,
    )
    if op.family != "norm":
        return _check_extended(op, case, dtype, device, seed, base)
    inp = make_inputs(op, case, dtype, seed)
    ns = case.normalized_shape
    try:
        got = _run_tokennorm(op, inp, ns, device)
    except Exception as exc:  # a raising op is a failed check, reported with its message
        return _raised(base, exc)
    want = _run_reference(op, inp, ns, dtype)
    magnitudes = term_magnitudes(op, inp, ns, dtype)
    checks = []
    for direction, got_t, want_t in zip(DIRECTIONS, got, want):
        for name, ref in want_t.items():
            if ref is None:
                continue
            bound = tolerance(dtype, direction, magnitudes[name])
            checks.append(_compared(base, direction, name, got_t[name], ref, magnitudes[name], bound))
    return checks


def _check_extended(op: Op, case: Case, dtype: torch.dtype, device: str, seed: int, base: dict) -> list[Check]:
    from tokennorm.tools.verify import extended

    try:
        rows = extended.compare(op, case, dtype, device, seed)
    except Exception as exc:  # a raising op is a failed check, reported with its message
        return _raised(base, exc)
    return [_compared(base, *row) for row in rows]


def _raised(base: dict, exc: Exception) -> list[Check]:
    """A raising op: a failed check in each direction, with its message."""
    error = f"{type(exc).__name__}: {exc}"
    return [
        Check(
            **base,
            direction=d,
            tensor="-",
            max_abs_error=None,
            max_abs_reference=None,
            max_rel_error=None,
            term_magnitude=None,
            tolerance=math.nan,
            passed=False,
            error=error,
        )
        for d in DIRECTIONS
    ]


def _compared(
    base: dict, direction: str, name: str, got: torch.Tensor, ref: torch.Tensor, magnitude: float, bound: float
) -> Check:
    """One output tensor against its reference: passed when max|got − ref| ≤ bound."""
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    ref_max = ref.abs().max().item() if ref.numel() else 0.0
    return Check(
        **base,
        direction=direction,
        tensor=name,
        max_abs_error=err,
        max_abs_reference=ref_max,
        max_rel_error=err / ref_max if ref_max > 0 else (0.0 if err == 0 else math.inf),
        term_magnitude=magnitude,
        tolerance=bound,
        passed=bool(err <= bound),
    )


def supported_dtypes(device: str) -> list[torch.dtype]:
    """float64, float32, bfloat16 (on CUDA only where the GPU supports it) and float16."""
    dtypes = [torch.float64, torch.float32]
    if device != "cuda" or torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    return dtypes + [torch.float16]


def run_checks(device: str, cases: tuple[Case, ...], seed: int = 0) -> list[Check]:
    """The whole sweep: every op × dtype × case, forward and backward, with the current backend."""
    return [
        check
        for dtype in supported_dtypes(device)
        for i, case in enumerate(cases)
        for op in OPS
        for check in check_op(op, case, dtype, device, seed + i)
    ]
