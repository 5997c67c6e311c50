"""add_norm's compute dtype: float64 when any of x, the residual or h is float64, else float32 — on both backends
and in the reference. h = residual + dropout(x) is computed in it from the exact operands and rounded once to h's
dtype; y = Norm(h as stored) is computed in it and rounded once to x's dtype. ε defaults are decided once
(reference.norm_eps)."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS
from torch.testing import assert_close

import tokennorm
from tokennorm import reference as R
from tokennorm.distributed import sharded_add_norm


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.getfixturevalue(request.param) or "cpu"


def _operands(x_dtype, residual_dtype, seed=0, x_scale=1.0):
    """x and a residual whose exact sum needs more bits than float32 holds."""
    g = torch.Generator().manual_seed(seed)
    x = (x_scale * torch.randn(6, 40, generator=g, dtype=torch.float64)).to(x_dtype)
    residual = (1e4 * torch.randn(6, 40, generator=g, dtype=torch.float64)).to(residual_dtype)
    return x, residual


def test_float64_residual_under_float32_x_is_added_and_normalized_in_float64(backend):
    x, residual = _operands(torch.float32, torch.float64)
    w, b = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    x, residual, w, b = (t.to(backend) for t in (x, residual, w, b))
    y, h = tokennorm.add_norm(x, residual, w.float(), b.float(), prenorm=True)
    exact = residual + x.double()
    assert h.dtype == torch.float64 and y.dtype == torch.float32
    assert torch.equal(h, exact)
    assert not torch.equal(exact, (residual.float() + x).double()), "the operands must tell float32 from float64"
    assert_close(y, F.layer_norm(exact, (40,), w.float().double(), b.float().double()).float(), rtol=2**-23, atol=1e-7)


def test_float64_x_into_a_float32_stream_is_rounded_once(backend):
    """h = float32(x + residual), not float32(x) + residual (two roundings)."""
    x, residual = _operands(torch.float64, torch.float32, seed=1, x_scale=1e4)
    x, residual = x.to(backend), residual.to(backend)
    y, h = tokennorm.add_norm(x, residual, norm="rmsnorm", prenorm=True)
    once = (x + residual.double()).float()
    assert h.dtype == torch.float32 and y.dtype == torch.float64
    assert torch.equal(h, once)
    assert not torch.equal(once, x.float() + residual), "the operands must tell one rounding from two"
    assert_close(y, F.rms_norm(once.double(), (40,)), rtol=1e-14, atol=1e-14)


def test_gradients_follow_each_input_s_dtype(backend):
    x, residual = _operands(torch.float32, torch.float64, seed=2)
    x, residual = x.to(backend).requires_grad_(), residual.to(backend).requires_grad_()
    w = torch.randn(40, device=x.device, requires_grad=True)
    y, h = tokennorm.add_norm(x, residual, w, norm="rmsnorm", prenorm=True)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    x64, r64, w64 = (t.detach().double().requires_grad_() for t in (x, residual, w))
    (F.rms_norm(r64 + x64, (40,), w64) * dy.double()).sum().backward()
    assert x.grad.dtype == torch.float32 and residual.grad.dtype == torch.float64
    assert_close(x.grad, x64.grad.float(), rtol=1e-5, atol=1e-6)
    assert_close(residual.grad, r64.grad, rtol=1e-5, atol=1e-6)
    assert_close(w.grad, w64.grad.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_dtype,residual_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_the_reference_states_the_same_contract(x_dtype, residual_dtype):
    x, residual = _operands(x_dtype, residual_dtype, seed=3)
    y, h = R.add_norm(x, residual, (40,))
    acc = R.compute_dtype(x_dtype, residual_dtype)
    h_exact = (residual.to(acc) + x.to(acc)).to(residual_dtype)
    assert torch.equal(h, h_exact)
    assert y.dtype == x_dtype
    assert_close(y, F.layer_norm(h.to(acc), (40,), eps=1e-5).to(x_dtype))


def test_rms_eps_defaults_to_torch_s_everywhere():
    """reference.add_norm and sharded_add_norm take norm_eps's defaults (they used to default RMSNorm ε to 1e-5)."""
    for fn in (R.add_norm, R.add_norm_backward, sharded_add_norm, tokennorm.add_norm):
        assert inspect.signature(fn).parameters["eps"].default is None, fn.__qualname__
    x = 1e-3 * torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    y, _ = R.add_norm(x, torch.zeros_like(x), (8,), norm="rmsnorm")
    assert_close(y, F.rms_norm(x, (8,)), rtol=2e-6, atol=2e-6)
    assert R.norm_eps(None, True, torch.bfloat16) == torch.finfo(torch.float32).eps
    assert R.norm_eps(None, False, torch.float64) == R.LAYER_NORM_EPS == tokennorm.functional.LAYER_NORM_EPS
    assert R.norm_eps(0.25, True, torch.float64) == 0.25


def test_float64_x_over_a_narrower_stream_has_a_float64_backward(backend):
    """The backward computes in float64 as the forward did: 1-element RMS rows, where dx = rstd·(g − x̂·mean(g·x̂))
    cancels to ~0 and a float32 backward is off by ~6e-8 (torch's backend ~5e-14)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 1, generator=g, dtype=torch.float64).to(backend).requires_grad_()
    y = tokennorm.add_norm(x, None, norm="rmsnorm", residual_dtype=torch.float32)
    dy = torch.randn(8, 1, generator=g, dtype=torch.float64).to(backend)
    y.backward(dy)
    x64 = x.detach().float().double().requires_grad_()  # the stream rounds x to float32; the norm sees that
    F.rms_norm(x64, (1,), eps=R.default_rms_eps(torch.float32)).backward(dy)
    assert x.grad.dtype == torch.float64
    assert_close(x.grad, x64.grad, rtol=0, atol=1e-12)
