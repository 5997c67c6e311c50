"""The DyT kernel (kernels/elementwise.py) at the launch level, against the float64 reference: y, h, dx,
d(residual), dα, dγ, dβ in each dtype, with and without each optional input, α as a tensor or a float, on grids
of several row programs and column blocks; bit-for-bit determinism; and the accuracy of its tanh.

Under Triton's interpreter the tanh is the float64 stand-in for libdevice's (helpers.tanh); the GPU build's
libdevice tanh is compared with torch's on a GPU (tests/kernels/test_issue18_gpu.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

from tokennorm import reference as R
from tokennorm.kernels.config import ELEMENTWISE, KernelConfig
from tokennorm.kernels.launch import dyt_backward, dyt_forward

pytestmark = pytest.mark.interpret

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
# Max error relative to the largest reference value of a tensor: y, h, dx, d(residual) are float32 math rounded
# once to their dtype (½ ulp; twice for slack); the sums dα, dγ, dβ are float32 (float64 for float64).
REL = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7, F16: 2.0**-10}
# Several row programs walking several row tiles, and several column blocks, on a small problem.
SMALL_TILES = KernelConfig(ELEMENTWISE, 16, 1, block_m=2, programs_per_sm=1)


def _case(m, n, dtype, residual=True, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    p_dtype = F32 if dtype in (BF16, F16) else dtype

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dt)

    return dict(
        x=rnd(m, n, scale=2.0),
        residual=rnd(m, n, dt=p_dtype) if residual else None,
        alpha=torch.tensor([0.6], dtype=p_dtype),
        weight=rnd(n, scale=0.1, shift=1.0, dt=p_dtype) if affine else None,
        bias=rnd(n, scale=0.1, dt=p_dtype) if affine else None,
        dy=rnd(m, n),
        dh=rnd(m, n, dt=p_dtype if residual else dtype),
    )


def _run(t, alpha_tensor=True, config=None):
    dev = lambda v: None if v is None else v.to(KERNEL_DEVICE)  # noqa: E731
    x, residual = dev(t["x"]), dev(t["residual"])
    alpha = dev(t["alpha"]) if alpha_tensor else None
    alpha_value = float(t["alpha"].item())
    h_dtype = None if residual is None else residual.dtype
    y, h = dyt_forward(x, residual, alpha, alpha_value, dev(t["weight"]), dev(t["bias"]), h_dtype, config)
    separate_dres = residual is not None and residual.dtype != x.dtype
    g = dyt_backward(
        dev(t["dy"]),
        x if h is None else h,
        alpha,
        alpha_value,
        dev(t["weight"]),
        None if h is None else dev(t["dh"]),
        x.dtype,
        residual.dtype if separate_dres else None,
        alpha_tensor,
        t["weight"] is not None,
        t["bias"] is not None,
        config,
    )
    out = {"y": y, "h": h, "dx": g.dx, "dalpha": g.dalpha, "dweight": g.dweight, "dbias": g.dbias}
    if residual is not None:
        out["dresidual"] = g.dresidual if separate_dres else g.dx
    return out


def _reference(t):
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    if t["residual"] is None:
        y = R.dyt(t64["x"], t64["alpha"], t64["weight"], t64["bias"])
        g = R.dyt_backward(t64["dy"], t64["x"], t64["alpha"], t64["weight"], t64["bias"])
        h = None
    else:
        y, h = R.add_dyt(t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"])
        g = R.add_dyt_backward(
            t64["dy"], t64["dh"], t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"]
        )
    return {
        "y": y,
        "h": h,
        "dx": g.dx,
        "dresidual": g.dresidual,
        "dalpha": g.dalpha,
        "dweight": g.dweight,
        "dbias": g.dbias,
    }


def _check(got, want, dtype):
    for name, value in got.items():
        if value is None:
            assert want[name] is None, name
            continue
        ref = want[name].double().reshape(value.shape)
        rel = REL[F64] if dtype == F64 else REL[value.dtype] if name in ("y", "h", "dx", "dresidual") else REL[F32]
        err = (value.double().cpu() - ref).abs().max().item()
        bound = rel * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [F32, BF16, F16, F64])
@pytest.mark.parametrize("residual", [False, True], ids=["dyt", "add_dyt"])
def test_matches_the_float64_reference(dtype, residual):
    """16-bit x with a float32 residual stream and float32 parameters; 37 rows, 24 columns: a partial row tile."""
    t = _case(37, 24, dtype, residual)
    out = _run(t)
    assert out["y"].dtype == dtype and out["dx"].dtype == dtype
    _check(out, _reference(t), dtype)


def test_several_row_programs_and_column_blocks_walk_every_tile():
    """16-column blocks over 40 columns (3 blocks, the last partial) and 2-row tiles walked by 4 row programs."""
    t = _case(21, 40, F32, residual=True, seed=1)
    _check(_run(t, config=SMALL_TILES), _reference(t), F32)


def test_without_weight_or_bias_and_with_a_float_alpha():
    t = _case(9, 24, F32, residual=False, affine=False, seed=2)
    out = _run(t, alpha_tensor=False)
    assert out["dalpha"] is None  # a Python α has no gradient
    _check(out, _reference(t) | {"dalpha": None}, F32)
    torch.testing.assert_close(out["y"], _run(t)["y"], rtol=0, atol=0)  # the same α, as a tensor


def test_bitwise_deterministic():
    t = _case(33, 40, BF16, residual=True, seed=3)
    first, second = _run(t, config=SMALL_TILES), _run(t, config=SMALL_TILES)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_tanh_is_correctly_rounded_in_float32_under_the_interpreter():
    """Every 2999th float32 in [2^-30, 20] and its negative (192K values): the kernel's tanh (α = 1, no γ/β) is
    within ½ ulp of tanh in float64 — correctly rounded — and within 1 ulp of torch's float32 tanh (itself
    within 0.51 ulp on the CPU). Measured in benchmarks/RESULTS.md, "DyT's tanh"."""
    bits = torch.arange(0x30800000, 0x41A00000, 2999, dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(F32), -bits.view(F32)])
    y, _ = dyt_forward(x.reshape(-1, 1).to(KERNEL_DEVICE), None, None, 1.0, None, None, None)
    y = y.reshape(-1).cpu()
    exact = torch.tanh(x.double())
    ulp = (torch.nextafter(exact.float().abs(), torch.tensor(float("inf"))) - exact.float().abs()).double()
    assert ((y.double() - exact).abs() / ulp).max().item() <= 0.5 + 1e-6
    assert ((y.double() - torch.tanh(x).double()).abs() / ulp).max().item() <= 1.0


def test_nan_and_inf_as_torch():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 30.0]])
    y, _ = dyt_forward(x.to(KERNEL_DEVICE), None, None, 0.5, None, None, None)
    torch.testing.assert_close(y.cpu(), torch.tanh(0.5 * x), equal_nan=True, rtol=0, atol=0)
    assert torch.signbit(y.cpu()[0, 4])  # tanh(-0) = -0
