"""When a check passes: ``max|out − ref| ≤ k · u · S``, with u the dtype's unit roundoff, k = :data:`ROUNDOFFS`
and S the largest term the tensor is computed from (:func:`term_magnitudes`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from tokennorm import reference
from tokennorm.tools.verify.cases import LAYER_NORM_EPS, Op

if TYPE_CHECKING:
    from tokennorm.tools.verify.checks import Inputs

# Unit roundoff u = 2^-p of each dtype (p = significand bits): the largest relative error of one rounding.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}


# Tolerances, in unit roundoffs u of the dtype, per dtype and direction. A check passes when
#     max|out − ref| ≤ k · u · S
# where S is the largest magnitude among the terms the tensor is computed from (term_magnitudes): the textbook
# bound for rounding in sums and differences. S ≈ max|ref| on ordinary rows; it is larger exactly where rounding
# is amplified, which a bare max|ref| misses: in a row of equal values x̂ = 0, yet torch's own float64 result is
# off by up to ~300u (u·|x|·rstd with rstd = 1/sqrt(ε)), and a dγ summed over 64 rows is smaller than its terms.
# Measured on the default sweep over 10 seeds (torch backend, CPU), the worst error was ≤ 1.7 k·u·S-units forward
# and ≤ 2.2 backward for bf16/fp16 (one rounding of y to the dtype, ≤ u; plus the rounding of h = residual + x
# before Add & Norm normalizes it, and of dy·γ in backward), and ≤ 3.6 forward, ≤ 5.7 backward for fp32/fp64
# (fp32/fp64 reductions over n ≤ 4096). The factors below leave 2–10× headroom for other summation orders (Triton's
# tree reductions, GPU kernels) while staying far below every real mistake: the unbiased variance is off by
# ≥ 1/(2n) = 1.2e-4 (2000u in fp32) and ε outside the root by 4.6% on the σ = 0.01 case (2.7× the bf16 tolerance).
ROUNDOFFS: dict[tuple[torch.dtype, str], float] = {
    (torch.float64, "forward"): 32,
    (torch.float64, "backward"): 64,
    (torch.float32, "forward"): 32,
    (torch.float32, "backward"): 64,
    (torch.bfloat16, "forward"): 4,
    (torch.bfloat16, "backward"): 8,
    (torch.float16, "forward"): 4,
    (torch.float16, "backward"): 8,
}


def tolerance(dtype: torch.dtype, direction: str, magnitude: float) -> float:
    """The largest |out − ref| accepted for a tensor of ``dtype`` whose terms are at most ``magnitude``."""
    return ROUNDOFFS[(dtype, direction)] * UNIT_ROUNDOFF[dtype] * magnitude


def term_magnitudes(
    op: Op,
    inp: Inputs,
    ns: tuple[int, ...],
    dtype: torch.dtype,
    eps: Optional[float] = None,
    uncentred_backward: bool = False,
) -> dict[str, float]:
    """For each compared tensor, the largest magnitude among the terms it is computed from; ``eps`` is the op's
    ε (default: verify's, :data:`LAYER_NORM_EPS` or torch's RMSNorm default for ``dtype``).
    ``uncentred_backward``: dx also carries the error of x̂ recomputed in its uncentred form (or from a rounded
    mean), |x|·rstd, through x̂·mean(g·x̂): + rstd · |x|·rstd · max|g| · max|x̂| · 2 — negligible on rows near
    zero, dominant far off-centre (|mean| ≫ σ), where any float32 backward loses u·|mean|/σ (used by the fuzz
    test; verify's own cases are near zero).

    Rounding errors scale with these, not with the result: a row of equal values has x̂ = 0 exactly, yet
    computing it as x·rstd − μ·rstd (as fused kernels do) leaves an error of u·|x|·rstd, with rstd = 1/sqrt(ε).
    Terms: x̂ in its uncentred form |x|·rstd; dx = rstd·dy·γ (+ dh); dγ = Σ_rows dy·x̂; dβ = Σ_rows dy.
    """
    n = math.prod(ns)
    x, w, dy = inp.x.double(), inp.weight.double().reshape(-1), inp.dy.double().reshape(-1, n).abs()
    h = (x if inp.residual is None else x + inp.residual.double()).reshape(-1, n)  # [rows, n]
    if eps is None:
        eps = LAYER_NORM_EPS if op.norm == "layernorm" else reference.default_rms_eps(dtype)
    if op.norm == "layernorm":
        rstd = torch.rsqrt(h.var(dim=1, correction=0, keepdim=True) + eps)  # [rows, 1]
    else:
        rstd = torch.rsqrt(h.square().mean(dim=1, keepdim=True) + eps)  # [rows, 1]
    xs = h.abs() * rstd  # [rows, n]
    beta = 0.0 if inp.bias is None else inp.bias.double().abs().max().item()
    dh = 0.0 if inp.dh is None else inp.dh.double().abs().max().item()
    dx_terms = rstd * dy * w.abs()  # [rows, n]
    if uncentred_backward:
        x_hat = ((h - h.mean(dim=1, keepdim=True)) if op.norm == "layernorm" else h).abs() * rstd
        g = (dy * w.abs()).amax(dim=1, keepdim=True)
        dx_terms = dx_terms + 2 * rstd * xs.amax(dim=1, keepdim=True) * g * x_hat.amax(dim=1, keepdim=True)
    mags = {
        "y": (xs * w.abs()).max().item() + beta,
        "dx": dx_terms.max().item() + dh,
        "dweight": (dy * xs).sum(dim=0).max().item(),
        "dbias": dy.sum(dim=0).max().item(),
    }
    if inp.residual is not None:
        mags["h"] = (inp.x.double().abs() + inp.residual.double().abs()).max().item()
        mags["dresidual"] = mags["dx"]
    return mags
