"""The channels-first LayerNorm kernel (kernels/channels_first.py) at the launch level, against the float64
reference: y, the saved statistics, dx, dγ, dβ in each dtype, images and audio, token counts that are no multiple
of the tile, a persistent grid walking several tiles, constant tokens, and bit-for-bit determinism."""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

from tokennorm import reference as R
from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import CHANNELS_FIRST, KernelConfig
from tokennorm.kernels.launch import channels_first_backward, channels_first_fits, channels_first_forward

pytestmark = pytest.mark.interpret

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
REL = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7, F16: 2.0**-10}  # as tests/kernels/test_elementwise.py
# 8-token tiles walked by one program per 'SM' (4 in the interpreter): every program takes several tiles.
WALKING = KernelConfig(CHANNELS_FIRST, 8, 1, block_m=8, programs_per_sm=1)


def _case(shape, dtype, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    p_dtype = F32 if dtype in (BF16, F16) else dtype
    x = (torch.randn(shape, generator=g, dtype=F64) * 2 + 3).to(dtype)
    w = (1 + 0.1 * torch.randn(c, generator=g, dtype=F64)).to(p_dtype) if affine else None
    b = (0.1 * torch.randn(c, generator=g, dtype=F64)).to(p_dtype) if affine else None
    return x, w, b, torch.randn(shape, generator=g, dtype=F64).to(dtype)


def _run(x, w, b, dy, eps=1e-5, configs=(None, None)):
    dev = lambda v: None if v is None else v.to(KERNEL_DEVICE)  # noqa: E731
    x3 = dev(x).reshape(x.shape[0], x.shape[1], -1)
    fwd = channels_first_forward(x3, dev(w), dev(b), eps, config=configs[0])
    dx, dw, db = channels_first_backward(
        dev(dy).reshape(x3.shape), x3, dev(w), fwd.mean, fwd.rstd, w is not None, b is not None, config=configs[1]
    )
    return {"y": fwd.y.reshape(x.shape), "dx": dx.reshape(x.shape), "dweight": dw, "dbias": db}, fwd


def _check(got, x, w, b, dy, eps=1e-5):
    g = R.layer_norm_channels_first_backward(
        dy.double(), x.double(), None if w is None else w.double(), None if b is None else b.double(), eps
    )
    want = {
        "y": R.layer_norm_channels_first(
            x.double(), None if w is None else w.double(), None if b is None else b.double(), eps
        ),
        "dx": g.dx,
        "dweight": g.dweight,
        "dbias": g.dbias,
    }
    for name, value in got.items():
        if value is None:
            assert want[name] is None, name
            continue
        rel = REL[F64] if x.dtype == F64 else REL[value.dtype] if name in ("y", "dx") else REL[F32]
        ref = want[name].double()
        err = (value.double().cpu() - ref).abs().max().item()
        bound = rel * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [F32, BF16, F16, F64])
def test_image_matches_the_float64_reference(dtype):
    """[2, 6, 5, 7]: 35 tokens per item, a partial token tile; 6 channels in an 8-wide channel block."""
    x, w, b, dy = _case((2, 6, 5, 7), dtype)
    got, _ = _run(x, w, b, dy)
    assert got["y"].dtype == dtype and got["dx"].dtype == dtype
    _check(got, x, w, b, dy)


@pytest.mark.parametrize("shape", [(3, 24, 11), (2, 1, 9), (1, 5, 2, 3, 4)], ids=["audio", "one-channel", "volume"])
def test_other_layouts_and_edges(shape):
    x, w, b, dy = _case(shape, F32, seed=1)
    _check(_run(x, w, b, dy)[0], x, w, b, dy)


def test_persistent_programs_walk_every_tile_and_store_the_statistics():
    x, w, b, dy = _case((3, 12, 29), F32, affine=False, seed=2)
    config = KernelConfig(CHANNELS_FIRST, 16, 1, block_m=8, programs_per_sm=1)
    got, fwd = _run(x, w, b, dy, configs=(config, config))
    _check(got, x, w, b, dy)
    x64 = x.double()
    torch.testing.assert_close(fwd.mean.double().cpu(), x64.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fwd.rstd.double().cpu(), torch.rsqrt(x64.var(1, correction=0) + 1e-5), rtol=1e-6, atol=0)


def test_a_constant_token_gives_beta_exactly():
    x, w, b, dy = _case((2, 12, 10), F32, seed=3)
    x[1, :, 4] = 7.25
    got, _ = _run(x, w, b, dy)
    assert torch.equal(got["y"][1, :, 4].cpu(), b)


def test_bitwise_deterministic():
    x, w, b, dy = _case((2, 16, 37), BF16, seed=4)
    config = KernelConfig(CHANNELS_FIRST, 16, 1, block_m=8, programs_per_sm=1)
    first, _ = _run(x, w, b, dy, configs=(config, config))
    second, _ = _run(x, w, b, dy, configs=(config, config))
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_channels_beyond_the_registers_are_declined():
    """Beyond 2048 channels forward, 1024 backward (float64: half), no tile fits: the op copies to channels-last
    and runs the rows kernels instead (tests/api/test_channels_first_triton.py)."""
    assert channels_first_fits(1024, torch.bfloat16) and not channels_first_fits(1025, torch.bfloat16)
    assert channels_first_fits(512, torch.float64) and not channels_first_fits(513, torch.float64)
    assert kconfig.channels_first_config(2048, 4, backward=False) is not None
    assert kconfig.channels_first_config(4096, 4, backward=False) is None
