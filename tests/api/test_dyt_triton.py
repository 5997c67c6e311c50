"""tokennorm.dyt / add_dyt / DyT / AddDyT on the Triton path: the glue around the DyT kernel — γ/β over one or
two trailing dims or none, α as a parameter, a 0-dim tensor or a float, prenorm's h, which inputs need gradients,
dropout in AddDyT, edges — against the float64 reference and the torch path. The kernel itself, in every dtype,
is tested in tests/kernels/test_dyt_kernels.py."""

import pytest
import torch

import tokennorm
from tokennorm import reference as R

pytestmark = pytest.mark.interpret

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16


def _randn(shape, dtype=F32, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dtype)


def _close(got, want, rel):
    err = (got.detach().double().cpu() - want.double()).abs().max().item()
    assert err <= rel * max(1.0, want.abs().max().item()), f"{err:.3g}"


@pytest.mark.parametrize("dtype", [F32, BF16, F64])
def test_add_dyt_prenorm_matches_the_float64_reference(triton_backend, dtype):
    """bf16 x with a float32 residual stream and float32 parameters; every gradient, h's included."""
    p = F32 if dtype == BF16 else dtype
    t = dict(
        x=_randn((3, 5, 24), dtype, 0, 2.0),
        residual=_randn((3, 5, 24), p, 1),
        alpha=torch.tensor([0.6], dtype=p),
        weight=_randn(24, p, 2, 0.1, 1.0),
        bias=_randn(24, p, 3, 0.1),
    )
    leaves = {k: v.to(triton_backend).requires_grad_() for k, v in t.items()}
    y, h = tokennorm.add_dyt(
        leaves["x"], leaves["residual"], leaves["alpha"], leaves["weight"], leaves["bias"], prenorm=True
    )
    dy, dh = _randn(y.shape, dtype, 4), _randn(h.shape, p, 5)
    torch.autograd.backward([y, h], [dy.to(triton_backend), dh.to(triton_backend)])
    t64 = {k: v.double() for k, v in t.items()}
    y_ref, h_ref = R.add_dyt(t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"])
    g = R.add_dyt_backward(
        dy.double(), dh.double(), t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"]
    )
    rel = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7}
    assert y.dtype == dtype and h.dtype == p
    _close(y, y_ref, rel[dtype])
    _close(h, h_ref, rel[p])
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == leaf.dtype, name
        _close(leaf.grad, getattr(g, "d" + name).reshape(leaf.shape), rel[leaf.dtype])


def test_two_trailing_dims_no_parameters_and_alpha_forms(triton_backend):
    dev = triton_backend
    x = _randn((4, 3, 6), F32, 0, 2.0).to(dev)
    w, b = _randn((3, 6), F32, 1, 0.1, 1.0).to(dev), _randn((3, 6), F32, 2, 0.1).to(dev)
    torch.testing.assert_close(
        tokennorm.dyt(x, torch.tensor(0.7, device=dev), w, b), w * torch.tanh(0.7 * x) + b, rtol=1e-6, atol=1e-6
    )  # γ/β over two dims, 0-dim α
    torch.testing.assert_close(tokennorm.dyt(x, 0.7), torch.tanh(0.7 * x), rtol=1e-6, atol=1e-6)  # a float α
    alpha = torch.tensor([0.7], device=dev, requires_grad=True)
    (dalpha,) = torch.autograd.grad(tokennorm.dyt(x, alpha).sum(), alpha)  # only α needs a gradient
    want = ((1 - torch.tanh(0.7 * x.double()) ** 2) * x.double()).sum()
    torch.testing.assert_close(dalpha.double().cpu(), want.reshape(1).cpu(), rtol=1e-5, atol=1e-5)


def test_modules_equal_the_torch_path(triton_backend):
    torch.manual_seed(0)
    x, r = torch.randn(2, 3, 8, device=triton_backend), torch.randn(2, 3, 8, device=triton_backend)
    for module in (tokennorm.DyT(8, alpha_init=0.8), tokennorm.AddDyT(8, "pre", dropout=0.5)):
        module = module.to(triton_backend)
        with torch.no_grad():
            module.weight.normal_()
            module.bias.normal_()
        args = (x, r) if isinstance(module, tokennorm.AddDyT) else (x,)
        torch.manual_seed(1)  # the same dropout mask on both backends (drawn by torch before the op)
        ours = module(*args)
        with tokennorm.using_backend("torch"):
            torch.manual_seed(1)
            theirs = module(*args)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_edges_as_the_composition(triton_backend):
    dev = triton_backend
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0]], device=dev)
    torch.testing.assert_close(tokennorm.dyt(x, torch.tensor([0.5], device=dev)), torch.tanh(0.5 * x), equal_nan=True)
    assert tokennorm.dyt(torch.randn(0, 8, device=dev), 0.5, torch.ones(8, device=dev)).shape == (0, 8)
    nc = torch.randn(6, 4, 8, device=dev).transpose(0, 1)
    assert torch.equal(
        tokennorm.dyt(nc, 0.5, torch.ones(8, device=dev)),
        tokennorm.dyt(nc.contiguous(), 0.5, torch.ones(8, device=dev)),
    )
    r = torch.randn(1, 4, device=dev)
    _, h = tokennorm.add_dyt(r, None, 0.5, prenorm=True)
    assert torch.equal(h, r) and h.data_ptr() != r.data_ptr()
    before = r.clone()
    tokennorm.add_dyt(torch.randn(1, 4, device=dev), r, 0.5)
    assert torch.equal(r, before)
