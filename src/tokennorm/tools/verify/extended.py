"""``tokennorm verify`` for issue 18's ops: the AdaLN-Zero step (``ada_norm`` with gate, residual and prenorm, over
LayerNorm and RMSNorm), ``dyt``, ``add_dyt`` (prenorm) and ``channels_first_layer_norm``.

Each runs through its public function on the case's shape — ``ada_norm`` and the channels-first norm over the
channel dim (the last dim of the case; moved to dim 1 for the channels-first op), DyT's γ/β over the case's
normalized shape — and every output and gradient (x, residual, shift, scale, gate, α, weight, bias) is compared
with :mod:`tokennorm.reference` in float64 on the same rounded inputs, within ``k · u · S`` as the other ops
(:mod:`~tokennorm.tools.verify.tolerance`), S the largest term each tensor is summed from.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokennorm import reference
from tokennorm.tools.verify.cases import LAYER_NORM_EPS, Case, Op
from tokennorm.tools.verify.tolerance import tolerance


def _draw(shape, gen, scale=1.0) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _max(t: Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def _ada_norm(op: Op, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator):
    from tokennorm.adaptive import ada_norm

    shape = case.shape
    mod = (shape[0], shape[-1])
    scale = case.scale
    t = dict(
        x=_draw(shape, gen, scale),
        residual=_draw(shape, gen, scale),
        shift=_draw(mod, gen, 0.1),
        scale=_draw(mod, gen, 0.1),
        gate=1.0 + _draw(mod, gen, 0.1),
    )
    dy, dh = _draw(shape, gen), _draw(shape, gen)
    low = {k: v.to(dtype) for k, v in t.items()}
    dy, dh = dy.to(dtype), dh.to(dtype)
    leaves = {k: v.to(device, copy=True).requires_grad_() for k, v in low.items()}
    y, h = ada_norm(
        leaves["x"],
        leaves["shift"],
        leaves["scale"],
        gate=leaves["gate"],
        residual=leaves["residual"],
        norm=op.norm,
        eps=LAYER_NORM_EPS if op.norm == "layernorm" else None,
        prenorm=True,
    )
    torch.autograd.backward([y, h], [dy.to(device), dh.to(device)])
    got_out = {"y": y, "h": h}
    got_grad = {"d" + k: v.grad for k, v in leaves.items()}

    t64 = {k: v.double() for k, v in low.items()}
    eps = LAYER_NORM_EPS if op.norm == "layernorm" else reference.default_rms_eps(dtype)
    y_ref, h_ref = reference.ada_norm(**t64, norm=op.norm, eps=eps)
    g = reference.ada_norm_backward(dy.double(), dh.double(), **t64, norm=op.norm, eps=eps)
    want_out = {"y": y_ref, "h": h_ref}
    want_grad = {"dx": g.dx, "dresidual": g.dresidual, "dshift": g.dshift, "dscale": g.dscale, "dgate": g.dgate}

    # magnitudes: uncentred x̂ = |h|·rstd, modulated by (1 + |scale|); dn = |dy|·(1 + |scale|) through rstd
    hh = t64["residual"] + t64["gate"].reshape(mod[0], *(1,) * (len(shape) - 2), mod[1]) * t64["x"]
    rows = hh.reshape(-1, shape[-1])
    spread = rows.var(dim=1, correction=0) if op.norm == "layernorm" else rows.square().mean(dim=1)
    rstd = torch.rsqrt(spread + eps).max().item()
    one_plus = 1 + _max(t64["scale"])
    xhat = _max(hh) * rstd
    dh_total = rstd * _max(dy.double()) * one_plus + _max(dh.double())
    n_tok = math.prod(shape[1:-1])
    mags = {
        "y": xhat * one_plus + _max(t64["shift"]),
        "h": _max(t64["residual"]) + _max(t64["gate"]) * _max(t64["x"]),
        "dx": dh_total * _max(t64["gate"]),
        "dresidual": dh_total,
        "dshift": n_tok * _max(dy.double()),
        "dscale": n_tok * _max(dy.double()) * xhat,
        "dgate": n_tok * dh_total * _max(t64["x"]),
    }
    return got_out, got_grad, want_out, want_grad, mags


def _dyt(op: Op, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator):
    from tokennorm.dynamic_tanh import add_dyt, dyt

    shape, ns = case.shape, case.normalized_shape
    p_dtype = dtype  # as the other ops' checks: parameters in the dtype under test (h is rounded to it anyway)
    t = dict(
        x=_draw(shape, gen, case.scale).to(dtype),
        alpha=(0.5 + 0.1 * _draw((1,), gen)).to(p_dtype),
        weight=(1.0 + 0.1 * _draw(ns, gen)).to(p_dtype),
        bias=(0.1 * _draw(ns, gen)).to(p_dtype),
    )
    if op.add:
        t["residual"] = _draw(shape, gen, case.scale).to(dtype)
    dy, dh = _draw(shape, gen).to(dtype), _draw(shape, gen).to(dtype)
    leaves = {k: v.to(device, copy=True).requires_grad_() for k, v in t.items()}
    if op.add:
        y, h = add_dyt(leaves["x"], leaves["residual"], leaves["alpha"], leaves["weight"], leaves["bias"], prenorm=True)
        torch.autograd.backward([y, h], [dy.to(device), dh.to(device)])
        got_out = {"y": y, "h": h}
    else:
        y = dyt(leaves["x"], leaves["alpha"], leaves["weight"], leaves["bias"])
        y.backward(dy.to(device))
        got_out = {"y": y}
    got_grad = {"d" + k: v.grad for k, v in leaves.items()}

    t64 = {k: v.double() for k, v in t.items()}
    if op.add:
        y_ref, h_ref = reference.add_dyt(t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"])
        g = reference.add_dyt_backward(
            dy.double(), dh.double(), t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"]
        )
        want_out = {"y": y_ref, "h": h_ref}
    else:
        want_out = {"y": reference.dyt(t64["x"], t64["alpha"], t64["weight"], t64["bias"])}
        g = reference.dyt_backward(dy.double(), t64["x"], t64["alpha"], t64["weight"], t64["bias"])
    want_grad = {"dx": g.dx, "dalpha": g.dalpha, "dweight": g.dweight, "dbias": g.dbias}
    if op.add:
        want_grad["dresidual"] = g.dresidual

    h64 = t64["x"] + t64.get("residual", 0.0)
    rows = max(1, dy.numel() // max(1, math.prod(ns)))
    a, w, dyd = _max(t64["alpha"]), _max(t64["weight"]), dy.double().abs()
    dx = a * _max(dyd) * w + (_max(dh.double()) if op.add else 0.0)
    mags = {
        "y": w + _max(t64["bias"]),
        "h": _max(t64["x"]) + _max(t64.get("residual", torch.zeros(1))),
        "dx": dx,
        "dresidual": dx,
        "dalpha": (dyd * w * h64.abs()).sum().item(),
        "dweight": rows * _max(dyd),
        "dbias": rows * _max(dyd),
    }
    return got_out, got_grad, want_out, want_grad, mags


def _channels_first(op: Op, case: Case, dtype: torch.dtype, device: str, gen: torch.Generator):
    from tokennorm.channels_first import channels_first_layer_norm
    from tokennorm.tools.verify.checks import Inputs
    from tokennorm.tools.verify.tolerance import term_magnitudes

    shape = case.shape
    c = shape[-1]
    token_shape = shape[:-1] + (1,)
    x = (case.scale * (_draw(shape, gen) + _draw(token_shape, gen))).to(dtype)  # channels last: [B, *, C]
    weight, bias = (1.0 + 0.1 * _draw((c,), gen)).to(dtype), (0.1 * _draw((c,), gen)).to(dtype)
    dy = _draw(shape, gen).to(dtype)
    # [B, C, *] stored channels first, as convolutions leave it (a channels-last layout takes the rows kernels)
    leaves = [t.to(device, copy=True).requires_grad_() for t in (x.movedim(-1, 1).contiguous(), weight, bias)]
    y = channels_first_layer_norm(*leaves, eps=LAYER_NORM_EPS)
    y.backward(dy.movedim(-1, 1).to(device))
    got_out = {"y": y.movedim(1, -1)}
    got_grad = {"dx": leaves[0].grad.movedim(1, -1), "dweight": leaves[1].grad, "dbias": leaves[2].grad}
    x64, w64, b64, dy64 = (t.double() for t in (x, weight, bias, dy))
    y_ref = reference.layer_norm_channels_first(x64.movedim(-1, 1), w64, b64, LAYER_NORM_EPS).movedim(1, -1)
    g = reference.layer_norm_channels_first_backward(dy64.movedim(-1, 1), x64.movedim(-1, 1), w64, b64, LAYER_NORM_EPS)
    want_grad = {"dx": g.dx.movedim(1, -1), "dweight": g.dweight, "dbias": g.dbias}
    # the same magnitudes as LayerNorm over the last dim of the channels-last view
    inputs = Inputs(x=x, residual=None, weight=weight, bias=bias, dy=dy, dh=None)
    mags = term_magnitudes(Op("layer_norm", "layernorm"), inputs, (c,), dtype)
    return got_out, got_grad, {"y": y_ref}, want_grad, mags


FAMILIES = {"ada_norm": _ada_norm, "dyt": _dyt, "channels_first": _channels_first}


def compare(op: Op, case: Case, dtype: torch.dtype, device: str, seed: int):
    """[(direction, tensor name, ours as float64 CPU, reference, term magnitude S, tolerance)] for ``op``."""
    gen = torch.Generator().manual_seed(seed)
    got_out, got_grad, want_out, want_grad, mags = FAMILIES[op.family](op, case, dtype, device, gen)
    rows = []
    for direction, got, want in (("forward", got_out, want_out), ("backward", got_grad, want_grad)):
        for name, ref in want.items():
            ours = got[name].detach().cpu().double()
            out_dtype = got[name].dtype  # a float32 parameter's gradient is a float32 result
            rows.append((direction, name, ours, ref, mags[name], tolerance(out_dtype, direction, mags[name])))
    return rows
