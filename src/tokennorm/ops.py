"""The Triton kernels with autograd: ``torch.library`` custom ops for torch.compile, an autograd Function for eager.

Two ops, ``tokennorm::norm_fwd`` and ``tokennorm::norm_bwd``, cover LayerNorm, RMSNorm and Add & Norm. They
are ``triton_op``s, so ``torch.compile`` traces into the kernel launches (no graph break, and Inductor can
still fuse around them); outputs are always fresh tensors, never views of inputs; no host synchronisation
and no data-dependent allocation happen inside, so they can be captured in a CUDA graph.

Eager calls with autograd take :class:`EagerNorm` instead: the same launchers, the same saved tensors and the
same backward glue (:func:`_setup_context`, :func:`_backward_with`), without the dispatcher's ~30 µs per op
call on the host (benchmarks/RESULTS.md). :func:`norm_forward` picks between them.

Inputs are [M, N] with a last stride of 1 (see :mod:`tokennorm.functional`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tokennorm.kernels import launch

__all__ = ["norm_fwd", "norm_bwd", "EagerNorm", "norm_forward"]

if hasattr(torch.library, "triton_op"):
    _define = torch.library.triton_op
else:  # pragma: no cover - torch < 2.6: an opaque custom op
    _define = torch.library.custom_op


@_define("tokennorm::norm_fwd", mutates_args=())
def norm_fwd(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    seed: Optional[Tensor],
    eps: float,
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    h_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h, mean, rstd) of ``Norm(residual + dropout(x)) · (weight + weight_offset) + bias``.

    h is stored when ``h_dtype`` is given (else an empty tensor); mean is empty for RMSNorm.
    """
    y, h, mean, rstd = launch.norm_forward(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms,
                                           h_dtype)
    return y, x.new_empty(0) if h is None else h, mean, rstd


@norm_fwd.register_fake
def _(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype):
    m, _n = x.shape
    acc = launch.acc_dtype(x.dtype)
    h = x.new_empty(x.shape, dtype=h_dtype) if h_dtype is not None else x.new_empty(0)
    mean = x.new_empty(0 if is_rms else m, dtype=acc)
    return x.new_empty(x.shape), h, mean, x.new_empty(m, dtype=acc)


@_define("tokennorm::norm_bwd", mutates_args=())
def norm_bwd(
    dy: Tensor,
    h: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    seed: Optional[Tensor],
    dropout_p: float,
    weight_offset: float,
    is_rms: bool,
    compute_dweight: bool,
    compute_dbias: bool,
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dresidual, dweight, dbias) given dy (and dh_in, the gradient of the h output).

    dweight/dbias are sums in the accumulation dtype (empty unless asked for); dresidual is empty unless
    ``residual_dtype``.
    """
    return tuple(
        launch.norm_backward(
            dy, h, weight, mean, rstd, dh_in, seed, dropout_p, weight_offset, is_rms,
            compute_dweight, compute_dbias, x_dtype, residual_dtype,
        )
    )


@norm_bwd.register_fake
def _(dy, h, weight, mean, rstd, dh_in, seed, dropout_p, weight_offset, is_rms, compute_dweight, compute_dbias,
      x_dtype, residual_dtype):
    n = h.shape[1]
    dres = h.new_empty(h.shape, dtype=residual_dtype) if residual_dtype is not None else h.new_empty(0, dtype=x_dtype)
    return (
        h.new_empty(h.shape, dtype=x_dtype),
        dres,
        h.new_empty(n if compute_dweight else 0, dtype=launch.acc_dtype(h.dtype)),
        h.new_empty(n if compute_dbias else 0, dtype=launch.acc_dtype(h.dtype)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype = inputs
    _y, h, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # an unused h output costs no zero-filled gradient
    ctx.save_for_backward(h if h_dtype is not None else x, weight, mean, rstd, seed)
    ctx.config = (dropout_p, weight_offset, is_rms, h_dtype is not None, x.dtype,
                  None if residual is None else residual.dtype, None if bias is None else bias.dtype)


def _backward_with(run_backward, ctx, dy: Optional[Tensor], dh: Optional[Tensor]) -> tuple:
    """Gradients of norm_fwd's inputs from those of its (y, h) outputs; ``run_backward`` is the norm_bwd op
    (torch.compile) or :func:`launch.norm_backward` (eager), which take the same arguments."""
    normalized, weight, mean, rstd, seed = ctx.saved_tensors
    dropout_p, weight_offset, is_rms, has_h, x_dtype, residual_dtype, bias_dtype = ctx.config
    need_x, need_w, need_b, need_res = ctx.needs_input_grad[:4]
    if dy is None:  # only h was used downstream
        dy = torch.zeros(normalized.shape, device=normalized.device, dtype=x_dtype)
    # d(residual) equals dh; it needs its own output only when dropout or a dtype change makes dx differ.
    separate_dres = need_res and (dropout_p > 0.0 or residual_dtype != x_dtype)
    dx, dres, dw, db = run_backward(
        _last_dim_contiguous(dy), normalized, weight, mean, rstd,
        None if (dh is None or not has_h) else _last_dim_contiguous(dh), seed, dropout_p, weight_offset, is_rms,
        need_w, need_b, x_dtype, residual_dtype if separate_dres else None,
    )
    if need_res and not separate_dres:
        dres = dx
    return (
        dx if need_x else None,
        dw.to(weight.dtype) if need_w else None,
        db.to(bias_dtype) if need_b else None,
        dres if need_res else None,
        None, None, None, None, None, None,
    )


def _backward(ctx, dy, dh, _dmean, _drstd):
    return _backward_with(torch.ops.tokennorm.norm_bwd, ctx, dy, dh)


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


class EagerNorm(torch.autograd.Function):
    """``norm_fwd`` with autograd in eager mode: launches the kernels directly, forward and backward.

    Same inputs and outputs as the op, same saved tensors and gradients (the glue above is shared). Defined in
    the old style (``forward(ctx, ...)``): with a separate ``setup_context``, ``Function.apply`` binds its
    arguments through ``inspect.signature`` on every call.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype):
        inputs = (x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype)
        output = launch.norm_forward(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype)
        _setup_context(ctx, inputs, output)
        return tuple(output)  # h is None when not stored (the op returns an empty tensor: its schema says Tensor)

    @staticmethod
    def backward(ctx, dy, dh, _dmean, _drstd):
        return _backward_with(launch.norm_backward, ctx, dy, dh)


def norm_forward(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor], seed: Optional[Tensor],
    eps: float, dropout_p: float, weight_offset: float, is_rms: bool, h_dtype: Optional[torch.dtype],
    needs_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) of ``norm_fwd`` (h: None unless ``h_dtype``), by the cheapest route that is correct here:

    * torch.compile tracing, or autograd under functorch transforms (vmap, grad): the ``triton_op``;
    * eager with ``needs_grad``: :class:`EagerNorm`;
    * eager inference: the launcher alone, without the statistics backward would need.
    """
    if torch.compiler.is_compiling() or (needs_grad and torch._C._are_functorch_transforms_active()):
        y, h, _, _ = torch.ops.tokennorm.norm_fwd(x, weight, bias, residual, seed, eps, dropout_p, weight_offset,
                                                  is_rms, h_dtype)
        return y, h if h_dtype is not None else None
    if needs_grad:
        y, h, _, _ = EagerNorm.apply(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype)
        return y, h if h_dtype is not None else None
    out = launch.norm_forward(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype,
                              store_stats=False)
    return out.y, out.h
