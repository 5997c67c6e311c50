r"""Adaptive γ/β: AdaLN and AdaLN-Zero (DiT), with the gated residual add fused in.

Diffusion and flow transformers (DiT, SD3, Flux, PixArt, …) normalize each token and then shift and scale it by
vectors computed from a conditioning input (timestep, class, text pooled embedding), one set per batch item::

    h = residual + gate ⊙ x          the gated residual of the previous sublayer (both optional)
    y = (Norm(h)·w + b) · (1 + scale) + shift

Statistics stay per token: the conditioning is per batch item and never mixes tokens. The math, with its
hand-written backward, is :func:`tokennorm.reference.ada_norm`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokennorm import _checks, ops
from tokennorm.backend import use_triton
from tokennorm.functional import NORMS, _flat, _requires_grad, _rows
from tokennorm.reference import compute_dtype, norm_eps

__all__ = ["ada_norm", "AdaLNZero", "Modulation"]

DIT_EPS = 1e-6  # AdaLNZero's default: DiT's and diffusers' AdaLayerNormZero's LayerNorm


def _check_modulation(name: str, m: Optional[Tensor], x: Tensor) -> None:
    if m is None:
        return
    if not isinstance(m, Tensor):
        raise TypeError(f"{name} must be a Tensor, but got {type(m).__name__}")
    per_item = (x.shape[0], x.shape[-1])
    if tuple(m.shape) not in (per_item, tuple(x.shape)):
        raise RuntimeError(
            f"Expected {name} of shape {list(per_item)} (one vector per batch item) or {list(x.shape)} (x's shape), "
            f"but got {name} of shape {list(m.shape)}"
        )
    if m.device != x.device:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but got {name} on {m.device} and x on {x.device}"
        )
    if not m.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, but got {name} of dtype {m.dtype}")


def _per_token(m: Optional[Tensor], x: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
    """[B, C] viewed as [B, 1, …, 1, C] (broadcast over x's tokens), x's shape as is; in ``dtype``."""
    if m is None:
        return None
    if m.dim() == 2 and x.dim() > 2:
        m = m.view(m.shape[0], *(1,) * (x.dim() - 2), m.shape[1])
    return m.to(dtype)


def ada_norm(
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    *,
    gate: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    norm: str = "layernorm",
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: Optional[float] = None,
    prenorm: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Adaptive norm with a gated residual add (AdaLN / AdaLN-Zero):

    .. math::
        h = r + g \odot x, \qquad
        y = \big(\mathrm{Norm}(h)\,\gamma + \beta\big)\,(1 + \mathrm{scale}) + \mathrm{shift}

    ``Norm`` is LayerNorm (mean and biased variance) or RMSNorm over the last dim of each token; γ = ``weight``
    and β = ``bias`` are the norm's own optional affine, applied before the modulation (diffusers'
    AdaLayerNormContinuous with ``elementwise_affine=True``; DiT has none). Without ``gate``, h = r + x; without
    ``residual``, h = g ⊙ x.

    Args:
        x: ``[B, *, C]``, at least 2-D; each ``[C]`` vector is a token. The sublayer output when gated.
        shift, scale: ``[B, C]`` (one vector per batch item, broadcast over its tokens, as DiT's) or x's shape.
        gate: like shift, multiplies x before the residual add (AdaLN-Zero's gate of the previous sublayer).
        residual: x's shape; any floating dtype (e.g. a float32 residual stream under bfloat16 activations).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        weight, bias: ``[C]``; x's dtype, or float32 for a bfloat16/float16 x (as ``F.layer_norm``).
        eps: inside the square root; ``None`` means 1e-5 for LayerNorm and torch's RMSNorm default for RMSNorm.
        prenorm: also return h, the new residual stream.

    Returns:
        y, in x's dtype and shape; or ``(y, h)`` when ``prenorm``, h in the residual's dtype (x's without one).
        Statistics and the modulation are computed in float32 (float64 when x or the residual is float64); the
        modulations may have any floating dtype. h is rounded to its dtype before it is normalized (it is the
        stored residual stream). Inputs are never modified.

    Example::

        >>> shift, scale, gate = adaln_linear(F.silu(c)).chunk(3, dim=-1)        # each [B, C]
        >>> y, h = tokennorm.ada_norm(attn_out, shift, scale, gate=gate_prev, residual=h, prenorm=True)
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, but got {type(x).__name__}")
    is_rms = norm == "rmsnorm"
    op_name = "rms_norm" if is_rms else "LayerNormKernelImpl"
    if x.dim() < 2:
        raise RuntimeError(f"ada_norm expects x of shape [B, *, C] (at least 2-D), but got x of size {list(x.shape)}")
    _checks.check_norm_inputs(op_name, x, tuple(x.shape[-1:]), weight, bias)
    for name, m in (("shift", shift), ("scale", scale), ("gate", gate)):
        _check_modulation(name, m, x)
    if residual is not None:
        _checks.check_residual(x, residual)
    h_dtype = residual.dtype if residual is not None else x.dtype
    eps = norm_eps(eps, is_rms, h_dtype)
    # The one dispatch point of this op: the fused Triton kernels, or the torch composition. (float64 x with a
    # narrower residual stream, or the reverse, is computed in float64 as documented: the composition does that;
    # the kernels take float64 from x forward and from h backward.)
    if (
        use_triton(x)
        and x.dtype in _checks.KERNEL_DTYPES
        and x.numel()
        and (x.dtype == torch.float64) == (h_dtype == torch.float64)
    ):
        y, h = _ada_norm_triton(x, shift, scale, gate, residual, is_rms, weight, bias, eps, h_dtype, prenorm)
    else:
        y, h = _ada_norm_torch(x, shift, scale, gate, residual, is_rms, weight, bias, eps, h_dtype)
    return (y, h) if prenorm else y


def _ada_norm_triton(
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    gate: Optional[Tensor],
    residual: Optional[Tensor],
    is_rms: bool,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    h_dtype: torch.dtype,
    prenorm: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """The fused kernels on x as [M, C] rows. [B, C] modulations stay [B, C] (row r reads row r // tokens);
    with any of them per token, the [B, C] ones are expanded to x's shape (a copy) and all are read per row."""
    n = x.shape[-1]
    mods = (shift, scale, gate)
    tokens = x.numel() // (x.shape[0] * n)
    if x.dim() > 2 and all(m is None or m.dim() == 2 for m in mods):
        rows = [None if m is None else _rows(m, n) for m in mods]
    else:
        tokens = 1
        rows = [None if m is None else _rows(_per_token(m, x, m.dtype).expand(x.shape), n) for m in mods]
    stores_h = gate is not None or residual is not None  # else h is x
    needs_grad = _requires_grad(x, shift, scale, gate, residual, weight, bias)
    y, h = ops.ada_norm_forward(
        _rows(x, n),
        _flat(weight),
        _flat(bias),
        None if residual is None else _rows(residual, n),
        *rows,
        eps,
        is_rms,
        tokens,
        h_dtype if stores_h else None,
        needs_grad,
    )
    if not prenorm:
        return y.view(x.shape), None
    return y.view(x.shape), h.view(x.shape) if stores_h else x.to(h_dtype, copy=True)


def _ada_norm_torch(
    x: Tensor,
    shift: Tensor,
    scale: Tensor,
    gate: Optional[Tensor],
    residual: Optional[Tensor],
    is_rms: bool,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    h_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    acc = compute_dtype(torch.promote_types(x.dtype, h_dtype))
    if gate is None and residual is None:
        h = x.to(h_dtype, copy=True)  # h is returned: never x itself
    else:
        xg = x.to(acc) if gate is None else x.to(acc) * _per_token(gate, x, acc)
        h = (xg if residual is None else residual.to(acc) + xg).to(h_dtype)
    ha = h.to(acc)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    shape = tuple(x.shape[-1:])
    if is_rms:
        n = F.rms_norm(ha, shape, w, eps)
        n = n if b is None else n + b
    else:
        n = F.layer_norm(ha, shape, w, b, eps)
    y = torch.addcmul(_per_token(shift, x, acc), n, 1 + _per_token(scale, x, acc))
    return y.to(x.dtype), h


class Modulation(NamedTuple):
    """One sublayer's AdaLN-Zero vectors, each ``[B, d_model]``: ``y = Norm(h)·(1 + scale) + shift`` before the
    sublayer, and ``h + gate ⊙ sublayer(y)`` after it."""

    shift: Tensor
    scale: Tensor
    gate: Tensor


class AdaLNZero(nn.Module):
    r"""AdaLN-Zero conditioning of a block (DiT): ``SiLU → Linear`` from the conditioning vector to a shift,
    scale and gate per sublayer, zero-initialised so every block starts as the identity.

    .. math:: [\mathrm{shift}_1, \mathrm{scale}_1, \mathrm{gate}_1, \mathrm{shift}_2, \dots]
              = \mathrm{Linear}(\mathrm{SiLU}(c))

    The chunk order is DiT's and diffusers' ``AdaLayerNormZero``'s (shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp for two sublayers): a ``linear`` copied from either gives the same vectors. The norm has
    no affine parameters (the modulation replaces them), as in DiT.

    Args:
        d_model: the width C of the tokens.
        cond_dim: the width of the conditioning vector c.
        num_sublayers: sublayers modulated (2: attention and feed-forward).
        norm: ``"layernorm"`` or ``"rmsnorm"``.
        eps: inside the square root. Default: 1e-6 (DiT's). bias: the Linear's bias.

    Shape:
        - ``forward(cond)``: cond ``[B, cond_dim]`` → ``num_sublayers`` :class:`Modulation`\ s of ``[B, d_model]``
          vectors.
        - ``normalize(x, m, ...)``: x ``[B, *, d_model]`` → y of x's shape and dtype (see :func:`ada_norm`).

    Examples::

        >>> adaln = tokennorm.AdaLNZero(384, 384)            # DiT-S: two sublayers
        >>> m_attn, m_ff = adaln(c)                          # c: [B, 384]
        >>> y = adaln.normalize(x, m_attn)                   # Norm(x)·(1 + scale) + shift
        >>> y, h = adaln.normalize(attn(y), m_ff, gate=m_attn.gate, residual=x, prenorm=True)
        >>> out = h + m_ff.gate[:, None] * ff(y)
    """

    def __init__(
        self,
        d_model: int,
        cond_dim: int,
        num_sublayers: int = 2,
        *,
        norm: str = "layernorm",
        eps: float = DIT_EPS,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, but got norm={norm!r}")
        if num_sublayers < 1:
            raise ValueError(f"num_sublayers must be at least 1, but got num_sublayers={num_sublayers}")
        self.d_model, self.cond_dim, self.num_sublayers = d_model, cond_dim, num_sublayers
        self.norm, self.eps = norm, eps
        self.linear = nn.Linear(cond_dim, 3 * num_sublayers * d_model, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # AdaLN-Zero: the projection starts at zero, so shift = scale = gate = 0 and each block is the identity
        nn.init.zeros_(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)

    def forward(self, cond: Tensor) -> tuple[Modulation, ...]:
        if cond.dim() != 2 or cond.shape[-1] != self.cond_dim:
            raise ValueError(
                f"AdaLNZero expects cond of shape [batch, {self.cond_dim}], but got cond of shape {list(cond.shape)}"
            )
        chunks = self.linear(F.silu(cond)).chunk(3 * self.num_sublayers, dim=-1)
        return tuple(Modulation(*chunks[i : i + 3]) for i in range(0, len(chunks), 3))

    def normalize(
        self,
        x: Tensor,
        modulation: Modulation,
        *,
        gate: Optional[Tensor] = None,
        residual: Optional[Tensor] = None,
        prenorm: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """:func:`ada_norm` with this module's norm and ε and ``modulation``'s shift and scale; ``gate`` is the
        gate of the *previous* sublayer (applied to x before the residual add)."""
        return ada_norm(
            x,
            modulation.shift,
            modulation.scale,
            gate=gate,
            residual=residual,
            norm=self.norm,
            eps=self.eps,
            prenorm=prenorm,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, cond_dim={self.cond_dim}, num_sublayers={self.num_sublayers}, "
            f"norm={self.norm!r}, eps={self.eps}"
        )
