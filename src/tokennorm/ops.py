"""The Triton kernels with autograd: ``torch.library`` custom ops for torch.compile, an autograd Function for eager.

Two ops, ``tokennorm::norm_fwd`` and ``tokennorm::norm_bwd``, cover LayerNorm, RMSNorm and Add & Norm. They
are ``triton_op``s, so ``torch.compile`` traces into the kernel launches (no graph break, and Inductor can
still fuse around them); outputs are always fresh tensors, never views of inputs; no host synchronisation
and no data-dependent allocation happen inside, so they can be captured in a CUDA graph.

Eager calls with autograd take :class:`EagerNorm` instead: the same launchers and the same backward glue
(:func:`_gradients`), without the dispatcher's host time per op call (benchmarks/RESULTS.md, "Host time per
call"). :func:`norm_forward` picks between them (:func:`_route`).

Issue 18's ops come in the same three forms: ``tokennorm::ada_norm_fwd/_bwd`` (AdaLN / AdaLN-Zero),
``dyt_fwd/_bwd`` (DyT, Add & DyT) and ``channels_first_fwd/_bwd`` (LayerNorm over dim 1), with
:class:`EagerAdaNorm`, :class:`EagerDyT`, :class:`EagerChannelsFirst` and the routers :func:`ada_norm_forward`,
:func:`dyt_forward`, :func:`channels_first_forward`.

Inputs are [M, N] with a last stride of 1 (see :mod:`tokennorm.functional`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tokennorm.kernels import launch

__all__ = [
    "norm_fwd",
    "norm_bwd",
    "EagerNorm",
    "norm_forward",
    "ada_norm_fwd",
    "ada_norm_bwd",
    "EagerAdaNorm",
    "ada_norm_forward",
    "dyt_fwd",
    "dyt_bwd",
    "EagerDyT",
    "dyt_forward",
    "channels_first_fwd",
    "channels_first_bwd",
    "EagerChannelsFirst",
    "channels_first_forward",
]

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
    y, h, mean, rstd = launch.norm_forward(
        x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype
    )
    return y, x.new_empty(0) if h is None else h, mean, rstd


@norm_fwd.register_fake
def _(x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype):
    return _norm_fwd_fake(x, is_rms, h_dtype)


def _norm_fwd_fake(x: Tensor, is_rms: bool, h_dtype: Optional[torch.dtype]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h, mean, rstd) as norm_fwd and ada_norm_fwd return them, for fake tensors."""
    m, _n = x.shape
    acc = launch.acc_dtype(x.dtype)
    h = x.new_empty(x.shape, dtype=h_dtype) if h_dtype is not None else x.new_empty(0)
    return x.new_empty(x.shape), h, x.new_empty(0 if is_rms else m, dtype=acc), x.new_empty(m, dtype=acc)


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
    return _backward_outputs(
        launch.norm_backward(
            dy,
            h,
            weight,
            mean,
            rstd,
            dh_in,
            seed,
            dropout_p,
            weight_offset,
            is_rms,
            compute_dweight,
            compute_dbias,
            x_dtype,
            residual_dtype,
        ),
        h,
        x_dtype,
    )


def _backward_outputs(out: launch.BackwardOut, h: Tensor, x_dtype: torch.dtype) -> tuple[Tensor, ...]:
    """A launch's (dx, dresidual, dweight, dbias) as a backward op returns them: its schema says Tensor, so an
    output not produced (None) is a 0-element tensor, of the dtype its fake gives."""
    dx, dres, dw, db = out
    acc = launch.acc_dtype(h.dtype)
    return (
        dx,
        h.new_empty(0, dtype=x_dtype) if dres is None else dres,
        h.new_empty(0, dtype=acc) if dw is None else dw,
        h.new_empty(0, dtype=acc) if db is None else db,
    )


@norm_bwd.register_fake
def _(
    dy,
    h,
    weight,
    mean,
    rstd,
    dh_in,
    seed,
    dropout_p,
    weight_offset,
    is_rms,
    compute_dweight,
    compute_dbias,
    x_dtype,
    residual_dtype,
):
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
    ctx.config = _config(x, bias, residual, dropout_p, weight_offset, is_rms, h_dtype)


def _backward(ctx, dy, dh, _dmean, _drstd):
    normalized, weight, mean, rstd, seed = ctx.saved_tensors
    return (
        *_gradients(
            torch.ops.tokennorm.norm_bwd, ctx.config, ctx.needs_input_grad, dy, dh, normalized, weight, mean, rstd, seed
        ),
        None,
        None,
        None,
        None,
        None,
        None,
    )


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _config(x, bias, residual, dropout_p, weight_offset, is_rms, h_dtype) -> tuple:
    """What backward needs to know of a forward call besides its saved tensors."""
    return (
        dropout_p,
        weight_offset,
        is_rms,
        h_dtype is not None,
        x.dtype,
        None if residual is None else residual.dtype,
        None if bias is None else bias.dtype,
    )


def _gradients(
    run_backward,
    config: tuple,
    needs_input_grad: tuple,
    dy: Optional[Tensor],
    dh: Optional[Tensor],
    normalized: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    seed: Optional[Tensor],
) -> tuple:
    """(dx, dweight, dbias, dresidual) of norm_fwd from the gradients of its (y, h) outputs, each None unless
    ``needs_input_grad`` asks for it; ``run_backward`` is the norm_bwd op (torch.compile) or
    :func:`launch.norm_backward` (eager), which take the same arguments."""
    dropout_p, weight_offset, is_rms, has_h, x_dtype, residual_dtype, bias_dtype = config
    need_x, need_w, need_b, need_res = needs_input_grad[:4]
    if x_dtype == torch.float64 and normalized.dtype != torch.float64:
        # The forward computed in float64 (x is): so does the backward, whose kernels compute in h's precision.
        normalized = normalized.to(torch.float64)
    if dy is None:  # only h was used downstream
        dy = torch.zeros(normalized.shape, device=normalized.device, dtype=x_dtype)
    elif dy.stride(-1) != 1:
        dy = dy.contiguous()
    if dh is not None and (not has_h or dh.stride(-1) != 1):
        dh = dh.contiguous() if has_h else None
    # d(residual) equals dh; it needs its own output only when dropout or a dtype change makes dx differ.
    separate_dres = need_res and (dropout_p > 0.0 or residual_dtype != x_dtype)
    dx, dres, dw, db = run_backward(
        dy,
        normalized,
        weight,
        mean,
        rstd,
        dh,
        seed,
        dropout_p,
        weight_offset,
        is_rms,
        need_w,
        need_b,
        x_dtype,
        residual_dtype if separate_dres else None,
    )
    return (
        dx if need_x else None,
        (dw if dw.dtype == weight.dtype else dw.to(weight.dtype)) if need_w else None,
        (db if db.dtype == bias_dtype else db.to(bias_dtype)) if need_b else None,
        (dres if separate_dres else dx) if need_res else None,
    )


class EagerNorm(torch.autograd.Function):
    """``norm_fwd`` with autograd in eager mode: launches the kernels directly, forward and backward.

    ``EagerNorm.apply(x, weight, bias, residual, (seed, eps, dropout_p, weight_offset, is_rms, h_dtype))`` returns
    ``(y, h)`` (h None unless ``h_dtype``) with the op's gradients, bit for bit (:func:`_gradients` is shared).
    For less host time per call than the op's route: the arguments that take no gradient come as one tuple, the
    statistics stay internal (not outputs: ctx attributes, which backward alone reads), and the class is in the
    old style (``forward(ctx, ...)``: with a separate ``setup_context``, ``apply`` binds its arguments through
    ``inspect.signature`` on every call).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual, options):
        seed, eps, dropout_p, weight_offset, is_rms, h_dtype = options
        y, h, mean, rstd = launch.norm_forward(
            x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype
        )
        ctx.save_for_backward(x if h is None else h, weight)  # inputs: version-checked in backward
        ctx.statistics = (mean, rstd, seed)
        ctx.config = _config(x, bias, residual, dropout_p, weight_offset, is_rms, h_dtype)
        if h is not None:
            ctx.set_materialize_grads(False)  # an unused h output costs no zero-filled gradient
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        normalized, weight = ctx.saved_tensors
        return (
            *_gradients(
                launch.norm_backward, ctx.config, ctx.needs_input_grad, dy, dh, normalized, weight, *ctx.statistics
            ),
            None,
        )


def norm_forward(
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
    needs_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) of ``norm_fwd`` (h: None unless ``h_dtype``), by the cheapest route that is correct here:

    * torch.compile tracing, or autograd under functorch transforms (vmap, grad): the ``triton_op``;
    * eager with ``needs_grad``: :class:`EagerNorm`;
    * eager inference: the launcher alone, without the statistics backward would need.
    """
    if not needs_grad and not torch.compiler.is_compiling():  # _route's _LAUNCH, without its frame (host time)
        # by position, the last two: config=None (the default tile), store_stats=False
        y, h, _, _ = launch.norm_forward(
            x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype, None, False
        )
        return y, h
    if _route(needs_grad) is _OP:
        y, h, _, _ = torch.ops.tokennorm.norm_fwd(
            x, weight, bias, residual, seed, eps, dropout_p, weight_offset, is_rms, h_dtype
        )
        return y, h if h_dtype is not None else None
    return EagerNorm.apply(x, weight, bias, residual, (seed, eps, dropout_p, weight_offset, is_rms, h_dtype))


_OP, _EAGER, _LAUNCH = "op", "eager", "launch"


def _route(needs_grad: bool) -> str:
    """How every op here runs a call: the ``triton_op`` while torch.compile traces (or for autograd under functorch
    transforms: vmap, grad), the eager autograd Function when gradients are needed, else the launcher alone."""
    if torch.compiler.is_compiling() or (needs_grad and torch._C._are_functorch_transforms_active()):
        return _OP
    return _EAGER if needs_grad else _LAUNCH


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _empty_if_none(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An op's optional output: its schema says Tensor, so an output not produced is a 0-element tensor."""
    return like.new_empty(0) if t is None else t


# ---------------------------------------------------------------------------------------------------------------
# Issue 18's ops, the same machinery: a triton_op pair (forward, backward) with fake implementations and
# autograd, an eager autograd Function sharing the saved tensors and the backward glue, and a router.
#
# AdaLN / AdaLN-Zero (tokennorm.ada_norm): h = residual + gate ⊙ x, y = (Norm(h)·w + b)·(1 + scale) + shift;
# shift/scale/gate are [samples, N] rows (``tokens`` rows of x each) or [M, N] (tokens = 1).
# ---------------------------------------------------------------------------------------------------------------


def _ada_norm_forward_launch(
    x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype, store_stats=True
):
    return launch.norm_forward(
        x,
        weight,
        bias,
        residual,
        None,
        eps,
        0.0,
        0.0,
        is_rms,
        h_dtype,
        store_stats=store_stats,
        modulation=launch.Modulation(shift, scale, gate, tokens),
    )


@_define("tokennorm::ada_norm_fwd", mutates_args=())
def ada_norm_fwd(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    shift: Tensor,
    scale: Tensor,
    gate: Optional[Tensor],
    eps: float,
    is_rms: bool,
    tokens: int,
    h_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h, mean, rstd) of AdaLN over [M, N] rows; h stored when ``h_dtype`` is given (else empty)."""
    y, h, mean, rstd = _ada_norm_forward_launch(
        x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype
    )
    return y, _empty_if_none(h, x), mean, rstd


@ada_norm_fwd.register_fake
def _(x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype):
    return _norm_fwd_fake(x, is_rms, h_dtype)


def _ada_norm_backward_launch(
    dy,
    h,
    x,
    weight,
    bias,
    mean,
    rstd,
    dh_in,
    shift,
    scale,
    gate,
    is_rms,
    tokens,
    compute_dweight,
    compute_dbias,
    compute_dshift,
    compute_dscale,
    compute_dgate,
    x_dtype,
    residual_dtype,
):
    """(dx, dresidual, dweight, dbias, dshift, dscale, dgate): the modulations' gradients in their dtypes and
    shapes; dshift only for per-sample modulations (per token it is dy itself: the glue's); each not asked for is
    a 0-element tensor."""
    mod = launch.Modulation(shift, scale, gate, tokens)
    out, grads = launch.ada_norm_backward(
        dy,
        h,
        x,
        weight,
        bias,
        mean,
        rstd,
        dh_in,
        mod,
        is_rms,
        compute_dweight,
        compute_dbias,
        x_dtype,
        residual_dtype,
        (compute_dshift and tokens != 1, compute_dscale, compute_dgate),
    )
    mods = [
        g.to(m.dtype) if g is not None else dy.new_empty(0)
        for g, m in zip(grads, (shift, scale, scale if gate is None else gate))
    ]
    return (*_backward_outputs(out, h, x_dtype), *mods)


@_define("tokennorm::ada_norm_bwd", mutates_args=())
def ada_norm_bwd(
    dy: Tensor,
    h: Tensor,
    x: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dh_in: Optional[Tensor],
    shift: Tensor,
    scale: Tensor,
    gate: Optional[Tensor],
    is_rms: bool,
    tokens: int,
    compute_dweight: bool,
    compute_dbias: bool,
    compute_dshift: bool,
    compute_dscale: bool,
    compute_dgate: bool,
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """AdaLN's backward (see :func:`_ada_norm_backward_launch`); ``shift`` is not read."""
    return _ada_norm_backward_launch(
        dy,
        h,
        x,
        weight,
        bias,
        mean,
        rstd,
        dh_in,
        shift,
        scale,
        gate,
        is_rms,
        tokens,
        compute_dweight,
        compute_dbias,
        compute_dshift,
        compute_dscale,
        compute_dgate,
        x_dtype,
        residual_dtype,
    )


@ada_norm_bwd.register_fake
def _(
    dy,
    h,
    x,
    weight,
    bias,
    mean,
    rstd,
    dh_in,
    shift,
    scale,
    gate,
    is_rms,
    tokens,
    compute_dweight,
    compute_dbias,
    compute_dshift,
    compute_dscale,
    compute_dgate,
    x_dtype,
    residual_dtype,
):
    n = h.shape[1]
    acc = launch.acc_dtype(h.dtype)

    def like(t, wanted):
        return h.new_empty(t.shape, dtype=t.dtype) if wanted else h.new_empty(0, dtype=dy.dtype)

    return (
        h.new_empty(h.shape, dtype=x_dtype),
        h.new_empty(h.shape, dtype=residual_dtype) if residual_dtype is not None else h.new_empty(0, dtype=x_dtype),
        h.new_empty(n if compute_dweight else 0, dtype=acc),
        h.new_empty(n if compute_dbias else 0, dtype=acc),
        like(shift, compute_dshift and tokens != 1),
        like(scale, compute_dscale),
        like(gate if gate is not None else scale, compute_dgate),
    )


def _ada_setup_context(ctx, inputs, output):
    x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype = inputs
    _y, h, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(
        h if h_dtype is not None else x, x if gate is not None else None, weight, bias, mean, rstd, shift, scale, gate
    )
    ctx.config = (
        is_rms,
        tokens,
        h_dtype is not None,
        x.dtype,
        None if residual is None else residual.dtype,
        None if bias is None else bias.dtype,
    )


def _ada_backward_with(run_backward, ctx, dy: Optional[Tensor], dh: Optional[Tensor]) -> tuple:
    """Gradients of ada_norm_fwd's inputs from those of (y, h); ``run_backward`` is the ada_norm_bwd op or
    :func:`_ada_norm_backward_launch`, which take the same arguments."""
    normalized, x, weight, bias, mean, rstd, shift, scale, gate = ctx.saved_tensors
    is_rms, tokens, has_h, x_dtype, residual_dtype, bias_dtype = ctx.config
    need_x, need_w, need_b, need_res, need_shift, need_scale, need_gate = ctx.needs_input_grad[:7]
    if dy is None:  # only h was used downstream
        dy = torch.zeros(normalized.shape, device=normalized.device, dtype=x_dtype)
    dy = _last_dim_contiguous(dy)
    # d(residual) is dh; dx = gate ⊙ dh differs from it with a gate (or a dtype change)
    separate_dres = need_res and (gate is not None or residual_dtype != x_dtype)
    dx, dres, dw, db, dshift, dscale, dgate = run_backward(
        dy,
        normalized,
        x,
        weight,
        bias,
        mean,
        rstd,
        None if (dh is None or not has_h) else _last_dim_contiguous(dh),
        shift,
        scale,
        gate,
        is_rms,
        tokens,
        need_w,
        need_b,
        need_shift,
        need_scale,
        need_gate,
        x_dtype,
        residual_dtype if separate_dres else None,
    )
    if need_res and not separate_dres:
        dres = dx
    if need_shift and tokens == 1:  # per token: dshift = dy
        dshift = dy.to(shift.dtype)
    return (
        dx if need_x else None,
        dw.to(weight.dtype) if need_w else None,
        db.to(bias_dtype) if need_b else None,
        dres if need_res else None,
        dshift if need_shift else None,
        dscale if need_scale else None,
        dgate if need_gate else None,
        None,
        None,
        None,
        None,
    )


def _ada_backward(ctx, dy, dh, _dmean, _drstd):
    return _ada_backward_with(torch.ops.tokennorm.ada_norm_bwd, ctx, dy, dh)


ada_norm_fwd.register_autograd(_ada_backward, setup_context=_ada_setup_context)


class EagerAdaNorm(torch.autograd.Function):
    """``ada_norm_fwd`` with autograd in eager mode (as :class:`EagerNorm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype):
        inputs = (x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype)
        output = _ada_norm_forward_launch(*inputs)
        _ada_setup_context(ctx, inputs, output)
        return tuple(output)

    @staticmethod
    def backward(ctx, dy, dh, _dmean, _drstd):
        return _ada_backward_with(_ada_norm_backward_launch, ctx, dy, dh)


def ada_norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    shift: Tensor,
    scale: Tensor,
    gate: Optional[Tensor],
    eps: float,
    is_rms: bool,
    tokens: int,
    h_dtype: Optional[torch.dtype],
    needs_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) of ``ada_norm_fwd`` (h: None unless ``h_dtype``), routed as :func:`norm_forward`."""
    route = _route(needs_grad)
    if route is not _LAUNCH:
        fn = torch.ops.tokennorm.ada_norm_fwd if route is _OP else EagerAdaNorm.apply
        y, h, _, _ = fn(x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype)
        return y, h if h_dtype is not None else None
    out = _ada_norm_forward_launch(
        x, weight, bias, residual, shift, scale, gate, eps, is_rms, tokens, h_dtype, store_stats=False
    )
    return out.y, out.h


# ---------------------------------------------------------------------------------------------------------------
# DyT and Add & DyT (tokennorm.dyt / add_dyt): y = γ · tanh(α · h) + β, h = residual + x or x; α a one-element
# tensor or (alpha=None) the float alpha_value.
# ---------------------------------------------------------------------------------------------------------------


@_define("tokennorm::dyt_fwd", mutates_args=())
def dyt_fwd(
    x: Tensor,
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    alpha_value: float,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    h_dtype: Optional[torch.dtype],
) -> tuple[Tensor, Tensor]:
    """(y, h) of DyT over [M, N] rows; h stored when ``h_dtype`` is given (else empty)."""
    y, h = launch.dyt_forward(x, residual, alpha, alpha_value, weight, bias, h_dtype)
    return y, _empty_if_none(h, x)


@dyt_fwd.register_fake
def _(x, residual, alpha, alpha_value, weight, bias, h_dtype):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=h_dtype) if h_dtype is not None else x.new_empty(0)


def _dyt_backward_launch(
    dy, h, alpha, alpha_value, weight, dh_in, x_dtype, residual_dtype, compute_dalpha, compute_dweight, compute_dbias
):
    """(dx, dresidual, dalpha, dweight, dbias), each not produced a 0-element tensor; the sums in the
    accumulation dtype."""
    out = launch.dyt_backward(
        dy,
        h,
        alpha,
        alpha_value,
        weight,
        dh_in,
        x_dtype,
        residual_dtype,
        compute_dalpha,
        compute_dweight,
        compute_dbias,
    )
    return tuple(_empty_if_none(t, dy) for t in out)


@_define("tokennorm::dyt_bwd", mutates_args=())
def dyt_bwd(
    dy: Tensor,
    h: Tensor,
    alpha: Optional[Tensor],
    alpha_value: float,
    weight: Optional[Tensor],
    dh_in: Optional[Tensor],
    x_dtype: torch.dtype,
    residual_dtype: Optional[torch.dtype],
    compute_dalpha: bool,
    compute_dweight: bool,
    compute_dbias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DyT's backward (see :func:`_dyt_backward_launch`)."""
    return _dyt_backward_launch(
        dy,
        h,
        alpha,
        alpha_value,
        weight,
        dh_in,
        x_dtype,
        residual_dtype,
        compute_dalpha,
        compute_dweight,
        compute_dbias,
    )


@dyt_bwd.register_fake
def _(
    dy, h, alpha, alpha_value, weight, dh_in, x_dtype, residual_dtype, compute_dalpha, compute_dweight, compute_dbias
):
    n = h.shape[1]
    acc = launch.acc_dtype(torch.promote_types(h.dtype, dy.dtype))
    return (
        h.new_empty(h.shape, dtype=x_dtype),
        h.new_empty(h.shape, dtype=residual_dtype) if residual_dtype is not None else dy.new_empty(0),
        h.new_empty((), dtype=acc) if compute_dalpha else dy.new_empty(0),
        h.new_empty(n, dtype=acc) if compute_dweight else dy.new_empty(0),
        h.new_empty(n, dtype=acc) if compute_dbias else dy.new_empty(0),
    )


def _dyt_setup_context(ctx, inputs, output):
    x, residual, alpha, alpha_value, weight, bias, h_dtype = inputs
    _y, h = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h if h_dtype is not None else x, alpha, weight)
    ctx.config = (
        alpha_value,
        h_dtype is not None,
        x.dtype,
        None if residual is None else residual.dtype,
        None if bias is None else bias.dtype,
    )


def _dyt_backward_with(run_backward, ctx, dy: Optional[Tensor], dh: Optional[Tensor]) -> tuple:
    """Gradients of dyt_fwd's inputs from those of (y, h); ``run_backward`` is the dyt_bwd op or
    :func:`_dyt_backward_launch`."""
    normalized, alpha, weight = ctx.saved_tensors
    alpha_value, has_h, x_dtype, residual_dtype, bias_dtype = ctx.config
    need_x, need_res, need_alpha, _, need_w, need_b = ctx.needs_input_grad[:6]
    if dy is None:
        dy = torch.zeros(normalized.shape, device=normalized.device, dtype=x_dtype)
    separate_dres = need_res and residual_dtype != x_dtype
    dx, dres, dalpha, dw, db = run_backward(
        _last_dim_contiguous(dy),
        normalized,
        alpha,
        alpha_value,
        weight,
        None if (dh is None or not has_h) else _last_dim_contiguous(dh),
        x_dtype,
        residual_dtype if separate_dres else None,
        need_alpha,
        need_w,
        need_b,
    )
    if need_res and not separate_dres:
        dres = dx
    return (
        dx if need_x else None,
        dres if need_res else None,
        dalpha.reshape(alpha.shape).to(alpha.dtype) if need_alpha else None,
        None,
        dw.to(weight.dtype) if need_w else None,
        db.to(bias_dtype) if need_b else None,
        None,
    )


def _dyt_backward(ctx, dy, dh):
    return _dyt_backward_with(torch.ops.tokennorm.dyt_bwd, ctx, dy, dh)


dyt_fwd.register_autograd(_dyt_backward, setup_context=_dyt_setup_context)


class EagerDyT(torch.autograd.Function):
    """``dyt_fwd`` with autograd in eager mode (as :class:`EagerNorm`)."""

    @staticmethod
    def forward(ctx, x, residual, alpha, alpha_value, weight, bias, h_dtype):
        inputs = (x, residual, alpha, alpha_value, weight, bias, h_dtype)
        output = launch.dyt_forward(*inputs)
        _dyt_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dy, dh):
        return _dyt_backward_with(_dyt_backward_launch, ctx, dy, dh)


def dyt_forward(
    x: Tensor,
    residual: Optional[Tensor],
    alpha: Optional[Tensor],
    alpha_value: float,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    h_dtype: Optional[torch.dtype],
    needs_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """(y, h) of ``dyt_fwd`` (h: None unless ``h_dtype``), routed as :func:`norm_forward`."""
    route = _route(needs_grad)
    if route is _LAUNCH:
        return launch.dyt_forward(x, residual, alpha, alpha_value, weight, bias, h_dtype)
    fn = torch.ops.tokennorm.dyt_fwd if route is _OP else EagerDyT.apply
    y, h = fn(x, residual, alpha, alpha_value, weight, bias, h_dtype)
    return y, h if h_dtype is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Channels-first LayerNorm (tokennorm.channels_first_layer_norm) over dim 1 of a contiguous [B, C, S].
# ---------------------------------------------------------------------------------------------------------------


@_define("tokennorm::channels_first_fwd", mutates_args=())
def channels_first_fwd(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) of LayerNorm over dim 1 of [B, C, S]; mean/rstd [B, S] in the accumulation dtype."""
    return tuple(launch.channels_first_forward(x, weight, bias, eps))


@channels_first_fwd.register_fake
def _(x, weight, bias, eps):
    acc = launch.acc_dtype(x.dtype)
    stats = (x.shape[0], x.shape[2])
    return x.new_empty(x.shape), x.new_empty(stats, dtype=acc), x.new_empty(stats, dtype=acc)


def _channels_first_backward_launch(dy, x, weight, mean, rstd, compute_dweight, compute_dbias):
    dx, dw, db = launch.channels_first_backward(dy, x, weight, mean, rstd, compute_dweight, compute_dbias)
    return dx, _empty_if_none(dw, dy), _empty_if_none(db, dy)


@_define("tokennorm::channels_first_bwd", mutates_args=())
def channels_first_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    compute_dweight: bool,
    compute_dbias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of channels-first LayerNorm; dweight/dbias in the accumulation dtype (empty unless
    asked for)."""
    return _channels_first_backward_launch(dy, x, weight, mean, rstd, compute_dweight, compute_dbias)


@channels_first_bwd.register_fake
def _(dy, x, weight, mean, rstd, compute_dweight, compute_dbias):
    acc, c = launch.acc_dtype(x.dtype), x.shape[1]
    return (
        x.new_empty(x.shape),
        x.new_empty(c if compute_dweight else 0, dtype=acc),
        x.new_empty(c if compute_dbias else 0, dtype=acc),
    )


def _channels_first_setup_context(ctx, inputs, output):
    x, weight, bias, _eps = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _channels_first_backward_with(run_backward, ctx, dy: Tensor) -> tuple:
    x, weight, mean, rstd = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = run_backward(dy.contiguous(), x, weight, mean, rstd, need_w, need_b)
    return (
        dx if need_x else None,
        dw.to(weight.dtype) if need_w else None,
        db.to(ctx.bias_dtype) if need_b else None,
        None,
    )


def _channels_first_backward(ctx, dy, _dmean, _drstd):
    return _channels_first_backward_with(torch.ops.tokennorm.channels_first_bwd, ctx, dy)


channels_first_fwd.register_autograd(_channels_first_backward, setup_context=_channels_first_setup_context)


class EagerChannelsFirst(torch.autograd.Function):
    """``channels_first_fwd`` with autograd in eager mode (as :class:`EagerNorm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        output = launch.channels_first_forward(x, weight, bias, eps)
        _channels_first_setup_context(ctx, (x, weight, bias, eps), output)
        return tuple(output)

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        return _channels_first_backward_with(_channels_first_backward_launch, ctx, dy)


def channels_first_forward(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, needs_grad: bool
) -> Tensor:
    """y of ``channels_first_fwd``, routed as :func:`norm_forward`."""
    route = _route(needs_grad)
    if route is _LAUNCH:
        return launch.channels_first_forward(x, weight, bias, eps, store_stats=False).y
    fn = torch.ops.tokennorm.channels_first_fwd if route is _OP else EagerChannelsFirst.apply
    return fn(x, weight, bias, eps)[0]
