"""add_norm means one thing on both backends: y = Norm(h as stored) computed in float32 (float64 when x or h is),
with each default decided once (issue 14, items 1–4: each test failed before the fix)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS
from torch.testing import assert_close

import tokennorm
from tokennorm.reference import default_rms_eps

FP32 = {"rtol": 2e-6, "atol": 2e-6}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.getfixturevalue(request.param) or "cpu"


def test_rms_default_eps_is_one_decision(backend):
    """Item 1: add_norm(norm="rmsnorm") and AddNorm(norm="rmsnorm") both take torch's RMSNorm default; with a
    tiny x the two used to differ by 1.22 (1e-5 against float32's machine epsilon)."""
    x = 1e-3 * torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    zero, ones = torch.zeros_like(x), torch.ones(8)
    expected = F.rms_norm(x, (8,), ones)
    assert_close(tokennorm.add_norm(x, zero, ones, norm="rmsnorm"), expected, **FP32)
    assert_close(tokennorm.AddNorm(8, norm="rmsnorm")(x, zero), expected, **FP32)
    assert_close(tokennorm.add_norm(x, zero, ones), F.layer_norm(x, (8,), ones, eps=1e-5), **FP32)
    assert tokennorm.AddNorm(8).eps == 1e-5 and tokennorm.AddNorm(8, norm="rmsnorm").eps is None


def test_rms_default_eps_follows_h(backend):
    """Item 2: the norm's input is h, so ε=None takes h's rule: float32 x with a float64 residual is normalized
    with float64's machine epsilon, as F.rms_norm(h) is (y max 0.091 instead of 2.81 before)."""
    g = torch.Generator().manual_seed(1)
    x = 1e-8 * torch.randn(4, 16, generator=g)
    residual = 1e-8 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    y, h = tokennorm.add_norm(x, residual, norm="rmsnorm", prenorm=True)
    assert h.dtype == torch.float64
    assert_close(y, F.rms_norm(h, (16,)).float(), **FP32)
    assert default_rms_eps(h.dtype) < 1e-15


@pytest.mark.parametrize("prenorm", [True, False])
def test_residual_dtype_applies_without_a_residual(backend, prenorm):
    """Item 3: with no residual, h is still x stored in residual_dtype, and y is the norm of that h — the same
    as with a zero residual (the Triton path used to normalize x itself: 1.9e-3 apart with float16)."""
    g = torch.Generator().manual_seed(2)
    x, w = 3 * torch.randn(6, 32, generator=g), torch.randn(32, generator=g)
    with_zero = tokennorm.add_norm(x, torch.zeros_like(x), w, prenorm=prenorm, residual_dtype=torch.float16)
    without = tokennorm.add_norm(x, None, w, prenorm=prenorm, residual_dtype=torch.float16)
    for got, expected in zip(without if prenorm else (without,), with_zero if prenorm else (with_zero,)):
        assert got.dtype == expected.dtype
        assert_close(got, expected, rtol=0, atol=0)
    y = without[0] if prenorm else without
    assert_close(y, F.layer_norm(x.half().float(), (32,), w), **FP32)


@pytest.mark.parametrize("stream", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_of_a_narrow_stream_is_computed_in_float32(backend, stream, norm):
    """Item 4: a residual stream narrower than x: y is the norm of h as stored, computed in float32 and rounded
    once to x's dtype; the torch path used to round y to h's dtype first (1.75e-3 off with float16)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 64, generator=g)
    residual = torch.randn(5, 64, generator=g).to(stream)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    y, h = tokennorm.add_norm(x, residual, w, b, norm=norm, prenorm=True)
    assert h.dtype == stream and y.dtype == torch.float32
    hf = h.float()
    expected = F.layer_norm(hf, (64,), w, b) if norm == "layernorm" else F.rms_norm(hf, (64,), w) + b
    assert_close(y, expected, **FP32)


@pytest.mark.interpret
def test_both_backends_agree_on_mixed_dtypes():
    """The same call on either backend: bf16 x, float32 stream, bf16 parameters with a zero-centred weight."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 48, generator=g).bfloat16()
    residual = torch.randn(4, 48, generator=g)
    w, b = (0.1 * torch.randn(48, generator=g)).bfloat16(), torch.randn(48, generator=g).bfloat16()
    results = []
    for name in ("torch", "triton"):
        with tokennorm.using_backend(name):
            results.append(tokennorm.add_norm(x, residual, w, b, norm="rmsnorm", prenorm=True, weight_offset=1.0))
    (y_torch, h_torch), (y_triton, h_triton) = results
    assert torch.equal(h_torch, h_triton)
    assert_close(y_triton.float(), y_torch.float(), rtol=0, atol=2**-7 * y_torch.abs().max().item())
