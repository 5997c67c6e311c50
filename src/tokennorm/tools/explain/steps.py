"""LayerNorm's arithmetic step by step on a small [B, N, C] tensor, beside torch's result and the classic mistakes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from tokennorm.tools.explain import pitfalls


@dataclass
class PitfallError:
    """One of the classic mistakes on the walkthrough's input: its output and how far it is from the right y."""

    name: str
    description: str
    right: str
    wrong: str
    y: Tensor  # [B, N, C] float64, with the walkthrough's γ, β
    max_abs_error: float
    relative_error: float  # max|wrong − right| / max|right| (pitfalls.relative: 0 or ∞ when max|right| = 0)
    other_token_change: float  # from tokennorm.pitfalls: 0 for a per-token norm


@dataclass
class Walkthrough:
    """LayerNorm of x [B, N, C] over C, step by step in float64, and torch's result for comparison.

    Per token (b, n): ``mean``, ``var`` (biased), ``rstd = 1/sqrt(var + eps)`` ([B, N]); per element: ``xhat``
    and ``y = xhat · weight + bias`` ([B, N, C]). ``torch_y`` is ``F.layer_norm`` on x in x's own dtype,
    ``torch_mean``/``torch_rstd`` the statistics torch saves for its backward (``aten.native_layer_norm``).
    """

    x: Tensor
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float
    mean: Tensor
    var: Tensor
    rstd: Tensor
    xhat: Tensor
    y: Tensor
    torch_y: Tensor
    torch_mean: Tensor
    torch_rstd: Tensor
    pitfalls: list[PitfallError]

    @property
    def max_abs_diff(self) -> float:
        """max |y − torch_y| (the float64 walkthrough against torch in x's dtype)."""
        return (self.y - self.torch_y.double()).abs().max().item()

    def tolerance(self) -> float:
        """How close torch must be: 64 · eps of x's dtype relative to max|y| (exact math, torch's rounding)."""
        return 64 * torch.finfo(self.x.dtype).eps * max(1.0, self.y.abs().max().item())


def walkthrough(
    x: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None
) -> Walkthrough:
    """LayerNorm over the last dim of x [B, N, C], one formula at a time (see :class:`Walkthrough`).

    The mistakes are :data:`tokennorm.pitfalls.PITFALLS` (unbiased variance, ε added to σ, statistics across
    tokens), each run with the same γ, β.
    """
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating [B, N, C] tensor, but got x of size {list(x.shape)} and dtype {x.dtype}"
        )
    c = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{name} must have shape [C] = [{c}], but got {name} of size {list(p.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, but got eps={eps}")
    xd = x.detach().double()
    wd = None if weight is None else weight.detach().double()
    bd = None if bias is None else bias.detach().double()
    mean = xd.sum(-1) / c  # μ = Σx / C
    var = ((xd - mean[..., None]) ** 2).sum(-1) / c  # σ² = Σ(x − μ)² / C: biased
    rstd = 1.0 / torch.sqrt(var + eps)  # ε inside the square root
    xhat = (xd - mean[..., None]) * rstd[..., None]
    y = xhat
    if wd is not None:
        y = y * wd
    if bd is not None:
        y = y + bd
    torch_y, torch_mean, torch_rstd = torch.ops.aten.native_layer_norm(x.detach(), [c], weight, bias, eps)
    errors = []
    for p in pitfalls.PITFALLS:
        with warnings.catch_warnings():  # C = 1: the unbiased variance divides by 0 (NaN is its answer, shown)
            warnings.filterwarnings("ignore", message=".*degrees of freedom")
            m = pitfalls.measure(p, xd, (c,), eps=eps)  # reuse: the same measurement docs/pitfalls.md reports
            wrong = p.function(xd, (c,), wd, bd, eps=eps)
        diff = (wrong - y).abs().max().item()
        errors.append(
            PitfallError(
                p.name,
                p.description,
                p.right,
                p.wrong,
                wrong,
                diff,
                pitfalls.relative(diff, y.abs().max().item()),
                m.other_token_change,
            )
        )
    return Walkthrough(
        x.detach(),
        weight,
        bias,
        eps,
        mean,
        var,
        rstd,
        xhat,
        y,
        torch_y,
        torch_mean.view(mean.shape),
        torch_rstd.view(rstd.shape),
        errors,
    )
