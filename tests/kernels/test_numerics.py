"""Numerics of the Triton kernels against float64 and torch: rounding of bfloat16 outputs, overflow, and the
row statistics on rows with huge outliers (issue 14 items 5 and 6; the statistics algorithm's choice).

Under Triton's interpreter (CI) these run the same jit helpers the GPU build compiles.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import KERNEL_DEVICE

import tokennorm
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, KernelConfig
from tokennorm.kernels.launch import norm_forward

pytestmark = pytest.mark.interpret

# Forward configs reaching each kernel on short rows: whole rows, a chunked walk, segments on several programs.
FORWARD_MODES = {"rows": None, "chunked": KernelConfig(CHUNKED, 16, 1), "long_rows": KernelConfig(LONG_ROWS, 16, 1)}


# Issue 14 item 6: bfloat16 outputs rounded to nearest even, as on a GPU and in torch — not truncated (Triton
# 3.9's interpreter truncates float32 → bfloat16 casts).


def test_add_norm_h_in_bfloat16_is_rounded_to_nearest_even(triton_backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=g).bfloat16().to(triton_backend)
    r = (torch.randn(16, 128, generator=g) + 100).bfloat16().to(triton_backend)
    y, h = tokennorm.add_norm(x, r, prenorm=True)
    h_ref = (x.float() + r.float()).bfloat16()  # what torch gives for residual + x in bf16
    assert torch.equal(h.cpu(), h_ref.cpu())
    # the norm of h as stored, in float32, rounded once
    y_ref = F.layer_norm(h_ref.float().cpu(), (128,)).bfloat16()
    assert (y.float().cpu() - y_ref.float()).abs().max() <= 2**-5  # at most one bf16 ulp at |y| < 4


def test_float64_input_with_a_bfloat16_residual_stream(triton_backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, generator=g, dtype=torch.float64).to(triton_backend)
    y, h = tokennorm.add_norm(x, None, prenorm=True, residual_dtype=torch.bfloat16)
    assert h.dtype == torch.bfloat16 and torch.equal(h.cpu(), x.cpu().float().bfloat16())
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
def test_bfloat16_y_is_the_float32_result_rounded_to_nearest_even(mode):
    """The kernel computes y in float32 and rounds once: a bf16 input gives bit for bit the float32 kernel's
    y (same input, upcast) rounded to nearest even by torch."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 40, generator=g) * 3 + 1).bfloat16().to(KERNEL_DEVICE)
    w = torch.randn(40, generator=g).bfloat16().to(KERNEL_DEVICE)
    b = torch.randn(40, generator=g).bfloat16().to(KERNEL_DEVICE)
    y16 = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None, config=FORWARD_MODES[mode]).y
    y32 = norm_forward(
        x.float(), w.float(), b.float(), None, None, 1e-5, 0.0, 0.0, False, None, config=FORWARD_MODES[mode]
    ).y
    assert torch.equal(y16.cpu(), y32.bfloat16().cpu())


# Issue 14 item 5: never a finite wrong value where torch gives NaN (or the right value).


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
@pytest.mark.parametrize("scale", [1e19, 1e20, 1e30, 3e38])
def test_layer_norm_overflow_gives_nan_not_a_finite_wrong_row(mode, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, generator=g) * scale
    y = norm_forward(
        x.to(KERNEL_DEVICE), None, None, None, None, 1e-5, 0.0, 0.0, False, None, config=FORWARD_MODES[mode]
    ).y.cpu()
    right = F.layer_norm(x.double(), (40,)).float()
    torch_y = F.layer_norm(x, (40,))
    # each element is NaN or the right value; where torch gives NaN, so do we
    ok = y.isnan() | torch.isclose(y, right, rtol=1e-4, atol=1e-4)
    assert ok.all(), y
    assert not (torch_y.isnan() & ~y.isnan()).any()


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
def test_inf_and_nan_inputs_behave_like_torch(mode):
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(4))
    x[1, 3] = float("inf")
    x[2, 30] = float("nan")
    x[3, 17] = -float("inf")
    for is_rms in (False, True):
        y = norm_forward(
            x.to(KERNEL_DEVICE), None, None, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=FORWARD_MODES[mode]
        ).y.cpu()
        expected = F.rms_norm(x, (40,), eps=1e-5) if is_rms else F.layer_norm(x, (40,), eps=1e-5)
        torch.testing.assert_close(y, expected, equal_nan=True)


# The statistics: corrected two-pass (rows), Chan-merged chunks and segments. Rows whose first element is a huge
# outlier are where a single reduction of sums shifted by the first element loses up to log2(N) bits.


def _outlier_rows(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    gauss = torch.randn(8, n, generator=g)
    one_hot = torch.zeros(2, n)
    one_hot[0, 0] = 1.0
    one_hot[1, n // 3] = 1.0
    massive = torch.randn(4, n, generator=g)
    massive[:, 0] = 1e3  # "massive activations": a few channels ~1e3 σ, here the first
    massive[:, 7] = -2e3
    return {"gauss": gauss, "gauss+1e4": gauss + 1e4, "one-hot": one_hot, "massive@0": massive}


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
@pytest.mark.parametrize("n", [64, 2048])
def test_statistics_stay_at_torch_error_level_on_outlier_rows(mode, n):
    """float32 mean/rstd within a few ulps of float64, and y no further from float64 than 2 × torch's own float32
    LayerNorm plus roundoff, on rows with a huge first element."""
    config = FORWARD_MODES[mode]
    if config is not None:
        config = KernelConfig(config.mode, n // 4, 1)
    for name, x in _outlier_rows(n).items():
        out = norm_forward(x.to(KERNEL_DEVICE), None, None, None, None, 1e-5, 0.0, 0.0, False, None, config=config)
        x64 = x.double()
        mean64, var64 = x64.mean(1), x64.var(1, unbiased=False)
        rstd64 = torch.rsqrt(var64 + 1e-5)
        torch.testing.assert_close(out.rstd.double().cpu(), rstd64, rtol=8 * 2**-24, atol=0, msg=name)
        # the mean: its own rounding (half an ulp of |mean|) plus a few ulps of the centred values' magnitude
        scale = (x64 - mean64[:, None]).abs().amax(1)
        bound = 2**-24 * mean64.abs() + 8 * 2**-24 * scale
        assert ((out.mean.double().cpu() - mean64).abs() <= bound).all(), name
        y64 = F.layer_norm(x64, (n,))
        ours = (out.y.double().cpu() - y64).abs().max()
        theirs = (F.layer_norm(x, (n,)).double() - y64).abs().max()
        assert ours <= 2 * theirs + 4e-6, (name, ours, theirs)


@pytest.mark.parametrize("mode", list(FORWARD_MODES))
def test_a_constant_row_gives_beta_exactly_even_with_eps_zero_giving_nan_like_torch(mode):
    x = torch.full((3, 40), 3.7)
    x[1] = -1234.5
    x[2] = 1e-30
    b = torch.randn(40, generator=torch.Generator().manual_seed(6))
    out = norm_forward(
        x.to(KERNEL_DEVICE),
        None,
        b.to(KERNEL_DEVICE),
        None,
        None,
        1e-5,
        0.0,
        0.0,
        False,
        None,
        config=FORWARD_MODES[mode],
    )
    assert torch.equal(out.mean.cpu(), x[:, 0]) and torch.equal(out.y.cpu(), b.expand(3, 40))
    # ε = 0: the variance is exactly 0, so 0 · (1/0) is NaN, as torch gives
    zero_eps = norm_forward(
        x.to(KERNEL_DEVICE), None, None, None, None, 0.0, 0.0, 0.0, False, None, config=FORWARD_MODES[mode]
    ).y.cpu()
    torch.testing.assert_close(zero_eps, F.layer_norm(x, (40,), eps=0.0), equal_nan=True)
