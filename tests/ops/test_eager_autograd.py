"""Eager autograd (ops.EagerNorm, the launchers called directly) gives the triton_op's results bit for bit: the
same kernels, the same saved tensors, the same backward glue — forward, every input gradient, h's gradient."""

import pytest
import torch
from conftest import KERNEL_DEVICE

from tokennorm import ops

CASES = {
    "layernorm": dict(is_rms=False, residual=False, dropout_p=0.0, h_dtype=None, weight_offset=0.0),
    "rmsnorm, weight offset": dict(is_rms=True, residual=False, dropout_p=0.0, h_dtype=None, weight_offset=1.0),
    "residual, h stored": dict(is_rms=False, residual=True, dropout_p=0.0, h_dtype=torch.float32, weight_offset=0.0),
    "residual, dropout": dict(is_rms=True, residual=True, dropout_p=0.25, h_dtype=torch.float32, weight_offset=0.0),
    "residual in float64": dict(is_rms=False, residual=True, dropout_p=0.0, h_dtype=torch.float64, weight_offset=0.0),
}


def _eager(x, w, b, r, *options):
    return ops.EagerNorm.apply(x, w, b, r, options)


def _op(*args):
    return torch.ops.tokennorm.norm_fwd(*args)[:2]


def _run(route, case, inputs):
    x, w, b, r, seed = (
        t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs
    )
    y, h = route(
        x,
        w,
        None if case["is_rms"] else b,
        r if case["residual"] else None,
        seed,
        1e-5,
        case["dropout_p"],
        case["weight_offset"],
        case["is_rms"],
        case["h_dtype"],
    )
    gy = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y).to(y.dtype)
    loss = (y * gy).sum()
    if case["h_dtype"] is not None:
        loss = loss + (h.float() ** 2).sum()
    loss.backward()
    return [y, h if case["h_dtype"] is not None else None] + [
        t.grad for t in (x, w, b, r) if t is not None and t.requires_grad
    ]


@pytest.mark.interpret
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_eager_autograd_equals_the_op(triton_backend, case):
    g = torch.Generator().manual_seed(0)
    m, n = 5, 48
    x, r = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
    w, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    inputs = [t.to(KERNEL_DEVICE) for t in (x, w, b, r)] + [torch.tensor([1234], device=KERNEL_DEVICE)]
    eager = _run(_eager, case, inputs)
    op = _run(_op, case, inputs)
    assert len(eager) == len(op)
    for i, (a, e) in enumerate(zip(eager, op)):
        assert (a is None) == (e is None), i
        if a is not None:
            assert a.dtype == e.dtype and torch.equal(a, e), f"output/gradient {i} differs"
