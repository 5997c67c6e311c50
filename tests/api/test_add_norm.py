"""Fused Add & Norm: h = residual + dropout(x), y = Norm(h), on both backends, against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, KERNEL_DEVICE

import tokennorm
from tokennorm import reference
from tokennorm.kernels.config import KernelConfig
from tokennorm.kernels.launch import norm_backward, norm_forward


def _device(request, backend_fixture):
    request.getfixturevalue(backend_fixture)
    return KERNEL_DEVICE if backend_fixture == "triton_backend" else "cpu"


def _leaf(t, device, dtype=None):
    return t.to(device=device, dtype=dtype or t.dtype).requires_grad_()


@pytest.mark.parametrize("backend_fixture", BACKENDS)
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("prenorm", [False, True], ids=["post", "pre"])
def test_matches_reference_forward_and_backward(request, backend_fixture, norm, prenorm):
    dev = _device(request, backend_fixture)
    g = torch.Generator().manual_seed(0)
    x = _leaf(torch.randn(3, 5, 24, generator=g), dev)
    r = _leaf(torch.randn(3, 5, 24, generator=g), dev)
    w = _leaf(torch.randn(24, generator=g), dev)
    b = _leaf(torch.randn(24, generator=g), dev)  # RMSNorm with a bias too: y = x̂ · γ + β
    out = tokennorm.add_norm(x, r, w, b, 1e-5, norm=norm, prenorm=prenorm)
    y, h = out if prenorm else (out, None)
    y_ref, h_ref = reference.add_norm(
        x.double().cpu(),
        r.double().cpu(),
        (24,),
        w.double().cpu(),
        None if b is None else b.double().cpu(),
        1e-5,
        norm=norm,
    )
    torch.testing.assert_close(y.double().cpu(), y_ref, atol=2e-5, rtol=0)
    dy = torch.randn(y.shape, generator=g).to(dev)
    dh = torch.randn(y.shape, generator=g).to(dev) if prenorm else None
    params = [p for p in (x, r, w, b) if p is not None]
    grads = torch.autograd.grad([y, h] if prenorm else [y], params, [dy, dh] if prenorm else [dy])
    ref = reference.add_norm_backward(
        dy.double().cpu(),
        None if dh is None else dh.double().cpu(),
        h_ref,
        x.double().cpu(),
        r.double().cpu(),
        (24,),
        w.double().cpu(),
        None if b is None else b.double().cpu(),
        1e-5,
        norm=norm,
    )
    expected = [ref.dx, ref.dresidual, ref.dweight] + ([ref.dbias] if b is not None else [])
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got.double().cpu(), exp, atol=1e-4, rtol=1e-5)
    if prenorm:
        torch.testing.assert_close(h.double().cpu(), h_ref, atol=1e-6, rtol=0)


@pytest.mark.interpret
def test_float32_residual_stream_under_bf16_activations(triton_backend):
    dev = triton_backend
    g = torch.Generator().manual_seed(1)
    x = _leaf(torch.randn(4, 32, generator=g), dev, torch.bfloat16)
    r = _leaf(torch.randn(4, 32, generator=g), dev, torch.float32)
    w = _leaf(torch.randn(32, generator=g), dev, torch.bfloat16)
    y, h = tokennorm.add_norm(x, r, w, None, None, norm="rmsnorm", prenorm=True, residual_dtype=torch.float32)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    torch.testing.assert_close(h.cpu(), r.detach().cpu() + x.detach().float().cpu(), atol=0, rtol=0)
    y_ref = reference.rms_norm(h.detach().double().cpu(), (32,), w.detach().double().cpu())
    torch.testing.assert_close(y.double().cpu(), y_ref, atol=3e-2, rtol=0)  # one bf16 ulp at |y| ~ 4
    dx, dr = torch.autograd.grad(y.float().sum() + h.sum(), (x, r))
    assert dx.dtype == torch.bfloat16 and dr.dtype == torch.float32
    torch.testing.assert_close(dx.float().cpu(), dr.cpu(), atol=1e-2, rtol=1e-2)  # without dropout dx = dh


@pytest.mark.interpret
def test_zero_centred_weight_offset(triton_backend):
    dev = triton_backend
    x, r = torch.randn(3, 16).to(dev), torch.randn(3, 16).to(dev)
    w = torch.randn(16).to(dev) * 0.1
    y = tokennorm.add_norm(x, r, w, None, 1e-6, norm="rmsnorm", weight_offset=1.0)
    expected = F.rms_norm((x + r).cpu(), (16,), (1.0 + w).cpu(), 1e-6)
    torch.testing.assert_close(y.cpu(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend_fixture", BACKENDS)
def test_without_dropout_it_is_the_unfused_composition(request, backend_fixture):
    dev = _device(request, backend_fixture)
    x, r = torch.randn(6, 20).to(dev), torch.randn(6, 20).to(dev)
    w, b = torch.randn(20).to(dev), torch.randn(20).to(dev)
    expected = F.layer_norm((r + x).cpu(), (20,), w.cpu(), b.cpu(), 1e-5)
    for kwargs in ({"dropout_p": 0.0}, {"dropout_p": 0.5, "training": False}):
        y = tokennorm.add_norm(x, r, w, b, 1e-5, **kwargs)
        torch.testing.assert_close(y.cpu(), expected, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("backend_fixture", BACKENDS)
def test_dropout_keep_rate_mask_reuse_and_reproducibility(request, backend_fixture):
    dev = _device(request, backend_fixture)
    p = 0.25
    x = torch.ones(32, 128, device=dev, requires_grad=True)
    r = torch.zeros(32, 128, device=dev)
    torch.manual_seed(7)
    y, h = tokennorm.add_norm(x, r, None, None, norm="rmsnorm", dropout_p=p, prenorm=True)
    keep = h.detach() != 0
    n = keep.numel()
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), rate  # 5σ of a binomial proportion
    torch.testing.assert_close(h.detach()[keep], torch.full((int(keep.sum()),), 1 / (1 - p), device=dev))
    # Backward regenerates the same mask: d(sum h)/dx is 1/(1 − p) where kept, 0 where dropped.
    (dx,) = torch.autograd.grad(h.sum(), x)
    assert torch.equal(dx != 0, keep)
    torch.testing.assert_close(dx[keep], torch.full((int(keep.sum()),), 1 / (1 - p), device=dev))
    torch.manual_seed(7)
    _, h_again = tokennorm.add_norm(x, r, None, None, norm="rmsnorm", dropout_p=p, prenorm=True)
    assert torch.equal(h_again, h)
    _, h_next = tokennorm.add_norm(x, r, None, None, norm="rmsnorm", dropout_p=p, prenorm=True)
    assert not torch.equal(h_next, h)


@pytest.mark.interpret
def test_chunked_path_with_residual_dropout_and_stored_h():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, generator=g).to(KERNEL_DEVICE)
    r = torch.randn(3, 40, generator=g).to(KERNEL_DEVICE)
    w = torch.randn(40, generator=g).to(KERNEL_DEVICE)
    seed = torch.tensor([99], device=KERNEL_DEVICE)
    single = norm_forward(x, w, None, r, seed, 1e-5, 0.3, 0.0, False, torch.float32)
    chunked = norm_forward(
        x, w, None, r, seed, 1e-5, 0.3, 0.0, False, torch.float32, config=KernelConfig("chunked", 16, 1)
    )
    assert torch.equal(single.h, chunked.h)  # same Philox offsets whatever the tiling
    torch.testing.assert_close(chunked.y, single.y, atol=2e-6, rtol=0)
    keep = (single.h - r) != 0
    y_ref, h_ref = reference.add_norm(
        x.double().cpu(), r.double().cpu(), (40,), w.double().cpu(), None, 1e-5, keep_mask=keep.cpu(), dropout_p=0.3
    )
    torch.testing.assert_close(single.y.double().cpu(), y_ref, atol=2e-5, rtol=0)
    dy = torch.randn(3, 40, generator=g).to(KERNEL_DEVICE)
    dh = torch.randn(3, 40, generator=g).to(KERNEL_DEVICE)
    ref = reference.add_norm_backward(
        dy.double().cpu(),
        dh.double().cpu(),
        h_ref,
        x.double().cpu(),
        r.double().cpu(),
        (40,),
        w.double().cpu(),
        None,
        1e-5,
        keep_mask=keep.cpu(),
        dropout_p=0.3,
    )
    for config in (None, KernelConfig("long_rows", 16, 1)):  # whole rows; rows split over programs
        out = norm_backward(
            dy,
            single.h,
            w,
            single.mean,
            single.rstd,
            dh,
            seed,
            0.3,
            0.0,
            False,
            True,
            False,
            torch.float32,
            torch.float32,
            config=config,
        )
        torch.testing.assert_close(out.dx.double().cpu(), ref.dx, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.dresidual.double().cpu(), ref.dresidual, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.dweight.double().cpu(), ref.dweight, atol=1e-4, rtol=0)


@pytest.mark.interpret
def test_addnorm_module_post_and_pre(triton_backend):
    dev = triton_backend
    x, r = torch.randn(2, 3, 16).to(dev), torch.randn(2, 3, 16).to(dev)
    post = tokennorm.AddNorm(16, device=dev)
    torch.testing.assert_close(post(x, r).cpu(), F.layer_norm((x + r).cpu(), (16,)), atol=2e-6, rtol=0)
    pre = tokennorm.AddNorm(16, norm="rmsnorm", placement="pre", residual_dtype=torch.float64, device=dev)
    y, h = pre(x, r)
    assert h.dtype == torch.float64
    torch.testing.assert_close(y.cpu(), F.rms_norm((x + r).cpu(), (16,)), atol=2e-6, rtol=0)
    gemma = tokennorm.AddNorm(16, norm="rmsnorm", weight_offset=1.0, device=dev)
    assert torch.equal(gemma.weight.detach().cpu(), torch.zeros(16))  # zero-centred: y = x̂ · (0 + 1)
    torch.testing.assert_close(gemma(x, r).cpu(), F.rms_norm((x + r).cpu(), (16,)), atol=2e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"dropout_p": 1.0}, ValueError, "dropout_p"),
        ({"dropout_p": -0.1}, ValueError, "dropout_p"),
        ({"norm": "batchnorm"}, ValueError, "norm"),
        ({"residual_dtype": torch.int32}, TypeError, "residual_dtype"),
        ({"residual": torch.randn(4, 9)}, RuntimeError, "residual"),
        ({"residual": torch.ones(4, 8, dtype=torch.long)}, TypeError, "residual"),
        ({"weight": torch.randn(9)}, RuntimeError, "weight"),
        ({"weight": torch.randn(8), "bias": torch.randn(3)}, RuntimeError, "bias"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, exc, match):
    x = torch.randn(4, 8)
    with pytest.raises(exc, match=match):
        tokennorm.add_norm(x, **kwargs)
