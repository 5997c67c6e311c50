"""Issue 18's torch.library ops (``tokennorm::ada_norm_fwd/_bwd``, ``dyt_fwd/_bwd``, ``channels_first_fwd/_bwd``):
schema, fake tensors and autograd registration (opcheck); the eager autograd Functions give the ops' results bit for
bit (the same launchers, saved tensors and backward glue); torch.compile traces the public functions without a
graph break."""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

import tokennorm
from tokennorm import ops

pytestmark = pytest.mark.interpret

# The aot-dispatch check traces through the kernel launch, which Triton's interpreter cannot do: GPU only.
UTILS = ("test_schema", "test_faketensor", "test_autograd_registration") + (
    ("test_aot_dispatch_dynamic",) if torch.cuda.is_available() else ()
)


def _t(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(KERNEL_DEVICE)


def _ada_args(per_sample=True, gate=True):
    b, t, c = 2, 3, 16
    mod = (b, c) if per_sample else (b * t, c)
    return (
        _t(b * t, c, seed=0),
        _t(c, seed=1),
        _t(c, seed=2),
        _t(b * t, c, seed=3),
        _t(*mod, seed=4),
        _t(*mod, seed=5, scale=0.5),
        _t(*mod, seed=6) if gate else None,
        1e-5,
        False,
        t if per_sample else 1,
        torch.float32,
    )


def _dyt_args():
    return (_t(6, 16, seed=0), _t(6, 16, seed=1), _t(1, seed=2), 0.0, _t(16, seed=3), _t(16, seed=4), torch.float32)


def _channels_first_args():
    return (_t(2, 8, 10, seed=0), _t(8, seed=1), _t(8, seed=2), 1e-5)


def _grad(args):
    return tuple(
        a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )


@pytest.mark.parametrize(
    "op,args",
    [
        ("ada_norm_fwd", _ada_args()),
        ("ada_norm_fwd", _ada_args(per_sample=False, gate=False)),
        ("dyt_fwd", _dyt_args()),
        ("channels_first_fwd", _channels_first_args()),
    ],
    ids=["ada-per-sample", "ada-per-token", "dyt", "channels_first"],
)
def test_opcheck_schema_fake_and_autograd_registration(op, args):
    fn = getattr(torch.ops.tokennorm, op).default
    torch.library.opcheck(fn, args, test_utils=UTILS)
    torch.library.opcheck(fn, _grad(args), test_utils=UTILS)


def _outputs_and_grads(fn, args):
    leaves = _grad(args)
    outs = [o for o in fn(*leaves) if o.is_floating_point() and o.requires_grad]
    weights = [torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o).to(o.dtype) for o in outs]
    torch.autograd.backward(outs, weights)
    return outs + [a.grad for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]


@pytest.mark.parametrize(
    "eager,op,args",
    [
        (ops.EagerAdaNorm, "ada_norm_fwd", _ada_args()),
        (ops.EagerAdaNorm, "ada_norm_fwd", _ada_args(per_sample=False)),
        (ops.EagerDyT, "dyt_fwd", _dyt_args()),
        (ops.EagerChannelsFirst, "channels_first_fwd", _channels_first_args()),
    ],
    ids=["ada-per-sample", "ada-per-token", "dyt", "channels_first"],
)
def test_eager_autograd_equals_the_op(eager, op, args):
    ours = _outputs_and_grads(eager.apply, args)
    theirs = _outputs_and_grads(getattr(torch.ops.tokennorm, op), args)
    assert len(ours) == len(theirs)
    for i, (a, e) in enumerate(zip(ours, theirs)):
        assert a.dtype == e.dtype and torch.equal(a, e), f"output/gradient {i} differs"


def test_torch_compile_fullgraph_traces_the_new_ops(triton_backend):
    """Dynamo traces ada_norm, add_dyt and channels_first_layer_norm on the Triton path without a graph break
    (backend="eager": Inductor needs a GPU; the graph runs the kernels in the interpreter here)."""

    def step(x, r, shift, scale, gate, alpha, image, w):
        y, h = tokennorm.ada_norm(x, shift, scale, gate=gate, residual=r, prenorm=True)
        z, h = tokennorm.add_dyt(y, h, alpha, w, None, prenorm=True)
        return z.sum() + h.sum() + tokennorm.channels_first_layer_norm(image, w).sum()

    args = _grad(
        (
            _t(2, 3, 16, seed=0),
            _t(2, 3, 16, seed=1),
            _t(2, 16, seed=2),
            _t(2, 16, seed=3),
            _t(2, 16, seed=4),
            _t(1, seed=5),
            _t(2, 16, 3, 3, seed=6),
            _t(16, seed=7),
        )
    )
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    got = torch.autograd.grad(compiled(*args), args)
    want = torch.autograd.grad(step(*args), args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
