"""The Triton kernels themselves, against the float64 reference.

On a CPU-only machine these run in Triton's interpreter (see conftest.py), so shapes are tiny; the modes for
long rows (chunked, long rows, segment) are reached by forcing small tiles through explicit KernelConfigs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

from tokennorm import reference
from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, ROWS, SEGMENT, KernelConfig, backward_config
from tokennorm.kernels.launch import norm_backward, norm_forward

pytestmark = pytest.mark.interpret

# (forward, backward) configs forcing each mode on tiny rows: 16-element chunks or segments.
MODES = {
    "rows": (None, None),
    "rows-2-per-tile": (KernelConfig(ROWS, 64, 1, block_m=2, programs_per_sm=1), KernelConfig(ROWS, 64, 1, block_m=2)),
    "chunked/long_rows": (KernelConfig(CHUNKED, 16, 1), KernelConfig(LONG_ROWS, 16, 1)),
    "long_rows/segment": (KernelConfig(LONG_ROWS, 16, 1), KernelConfig(SEGMENT, 16, 1, block_m=2)),
}
LONG = MODES["chunked/long_rows"]

# Max abs error vs the float64 reference, per output dtype: fp32 roundoff, else one or two output ulps at
# |y| ~ 4 (bf16: 8 mantissa bits -> ulp 2^-5 at 4; fp16: 11 bits -> ulp 2^-8 at 4).
ATOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 6.3e-2, torch.float16: 8e-3}


def _inputs(m, n, dtype, weight, bias, param_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    pd = param_dtype or dtype
    x = (torch.randn(m, n, generator=g) * 2 + 3).to(dtype).to(KERNEL_DEVICE)
    w = (torch.randn(n, generator=g) + 1).to(pd).to(KERNEL_DEVICE) if weight else None
    b = torch.randn(n, generator=g).to(pd).to(KERNEL_DEVICE) if bias else None
    dy = torch.randn(m, n, generator=g).to(dtype).to(KERNEL_DEVICE)
    return x, w, b, dy


def _ref(x, w, b, dy, eps, is_rms, weight_offset=0.0):
    x64, dy64 = x.double().cpu(), dy.double().cpu()
    w64 = None if w is None else w.double().cpu()
    b64 = None if b is None else b.double().cpu()
    n = (x.shape[1],)
    if is_rms:
        y = reference.rms_norm(x64, n, w64, eps, weight_offset)
        g = reference.rms_norm_backward(dy64, x64, n, w64, eps, weight_offset)
        y = y if b64 is None else y + b64
        g.dbias = None if b64 is None else dy64.sum(0)
    else:
        y = reference.layer_norm(x64, n, w64, b64, eps, weight_offset)
        g = reference.layer_norm_backward(dy64, x64, n, w64, b64, eps, weight_offset)
    return y, g


def _close(actual, expected, dtype, scale=1.0):
    torch.testing.assert_close(actual.double().cpu(), expected, atol=ATOL[dtype] * scale, rtol=0)


def _run(x, w, b, dy, eps, is_rms, configs=(None, None), weight_offset=0.0):
    fwd = norm_forward(x, w, b, None, None, eps, 0.0, weight_offset, is_rms, None, config=configs[0])
    bwd = norm_backward(
        dy,
        x,
        w,
        fwd.mean,
        fwd.rstd,
        None,
        None,
        0.0,
        weight_offset,
        is_rms,
        w is not None,
        b is not None,
        x.dtype,
        None,
        config=configs[1],
    )
    return fwd, bwd


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("affine", ["none", "weight", "weight+bias"])
def test_switches_float32(mode, is_rms, affine):
    m, n = 7, 37  # a prime number of rows; a row length that is no power of two and spans 3 chunks
    x, w, b, dy = _inputs(m, n, torch.float32, affine != "none", affine == "weight+bias")
    fwd, bwd = _run(x, w, b, dy, 1e-5, is_rms, MODES[mode])
    y_ref, g = _ref(x, w, b, dy, 1e-5, is_rms)
    _close(fwd.y, y_ref, torch.float32)
    _close(bwd.dx, g.dx, torch.float32)
    if w is not None:
        _close(bwd.dweight, g.dweight, torch.float32, scale=m)
    if b is not None:
        _close(bwd.dbias, g.dbias, torch.float32, scale=m)
    # saved statistics: rstd for both norms, mean for LayerNorm only
    x64 = x.double().cpu()
    if is_rms:
        assert fwd.mean.numel() == 0
        torch.testing.assert_close(fwd.rstd.double().cpu(), torch.rsqrt(x64.square().mean(1) + 1e-5), rtol=1e-6, atol=0)
    else:
        torch.testing.assert_close(fwd.mean.double().cpu(), x64.mean(1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            fwd.rstd.double().cpu(), torch.rsqrt(x64.var(1, unbiased=False) + 1e-5), rtol=1e-6, atol=0
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("mode", ["rows", "chunked/long_rows"])
def test_dtypes(dtype, mode):
    m, n = 5, 40
    for is_rms in (False, True):
        x, w, b, dy = _inputs(m, n, dtype, True, not is_rms)
        fwd, bwd = _run(x, w, b, dy, 1e-5, is_rms, MODES[mode])
        y_ref, g = _ref(x, w, b, dy, 1e-5, is_rms)
        assert fwd.y.dtype == dtype and bwd.dx.dtype == dtype
        _close(fwd.y, y_ref, dtype)
        _close(bwd.dx, g.dx, dtype)
        # dγ/dβ partials are float32 (float64 for float64): only roundoff of the sum, not of dtype.
        assert bwd.dweight.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(bwd.dweight.double().cpu(), g.dweight.double(), atol=1e-4 * m, rtol=1e-5)


def test_weight_offset_is_zero_centred_weight():
    x, w, b, dy = _inputs(4, 24, torch.float32, True, False)
    for configs in (MODES["rows"], LONG):
        fwd, bwd = _run(x, w, None, dy, 1e-6, True, configs, weight_offset=1.0)
        y_ref, g = _ref(x, w, None, dy, 1e-6, True, weight_offset=1.0)
        _close(fwd.y, y_ref, torch.float32)
        _close(bwd.dx, g.dx, torch.float32)
        _close(bwd.dweight, g.dweight, torch.float32, scale=4)


# Long rows: each row over several programs that exchange their segments' partials (under the interpreter in
# two launches). 37 columns make segments of 16, 16 and 5.
LONG_ROWS_CONFIG = KernelConfig(LONG_ROWS, 16, 1)


@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_long_rows_match_the_reference_and_the_whole_row_kernel(is_rms):
    m, n = 5, 37
    x, w, b, dy = _inputs(m, n, torch.float32, True, not is_rms)
    split = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=LONG_ROWS_CONFIG)
    whole = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None)
    y_ref, g = _ref(x, w, b, dy, 1e-5, is_rms)
    _close(split.y, y_ref, torch.float32)
    # The merged statistics are the row's own, to float32 rounding, and backward can use them.
    torch.testing.assert_close(split.rstd, whole.rstd, rtol=4e-7, atol=0)
    if not is_rms:
        torch.testing.assert_close(split.mean, whole.mean, rtol=4e-7, atol=1e-7)
    for config in (LONG_ROWS_CONFIG, KernelConfig(SEGMENT, 16, 1, block_m=2)):
        bwd = norm_backward(
            dy,
            x,
            w,
            split.mean,
            split.rstd,
            None,
            None,
            0.0,
            0.0,
            is_rms,
            True,
            not is_rms,
            x.dtype,
            None,
            config=config,
        )
        _close(bwd.dx, g.dx, torch.float32)
        _close(bwd.dweight, g.dweight, torch.float32, scale=m)
        if not is_rms:
            _close(bwd.dbias, g.dbias, torch.float32, scale=m)


def test_long_rows_add_norm_backward_with_dropout_matches_the_whole_row_kernel():
    m, n = 4, 40
    x, w, b, dy = _inputs(m, n, torch.float32, True, True)
    r = _inputs(m, n, torch.float32, False, False, seed=1)[0]
    dh = _inputs(m, n, torch.float32, False, False, seed=2)[0]
    seed = torch.tensor([99], device=KERNEL_DEVICE)
    fwd = norm_forward(x, w, b, r, seed, 1e-5, 0.25, 0.0, False, torch.float32)
    outs = [
        norm_backward(
            dy,
            fwd.h,
            w,
            fwd.mean,
            fwd.rstd,
            dh,
            seed,
            0.25,
            0.0,
            False,
            True,
            True,
            x.dtype,
            torch.float32,
            config=config,
        )
        for config in (None, KernelConfig(LONG_ROWS, 16, 1), KernelConfig(SEGMENT, 16, 1))
    ]
    for other in outs[1:]:
        for whole, split in zip(outs[0], other):
            torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
        assert torch.equal(outs[0].dx == 0, other.dx == 0)  # the same dropped elements


@pytest.mark.parametrize("mode", ["rows", "chunked/long_rows"])
def test_fused_pair_reductions_give_the_same_results(monkeypatch, mode):
    """The GPU build sums pairs (Σd, Σd²; Σg·x̂, Σg) in one two-operand reduction; the interpreter runs the
    two-reduction form for speed. Here the fused form runs too (tiny tiles: it is slow interpreted)."""
    import triton.language as tl

    from tokennorm.kernels import helpers

    m, n = 5, 37
    x, w, b, dy = _inputs(m, n, torch.float32, True, True)
    y_ref, g = _ref(x, w, b, dy, 1e-5, False)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(helpers, "FUSED_SUMS", tl.constexpr(fused))
        fwd, bwd = _run(x, w, b, dy, 1e-5, False, MODES[mode])
        _close(fwd.y, y_ref, torch.float32)
        _close(bwd.dx, g.dx, torch.float32)
        _close(bwd.dweight, g.dweight, torch.float32, scale=m)
        results.append((fwd.y, fwd.rstd, bwd.dx))
    for a, b_ in zip(*results):
        torch.testing.assert_close(a, b_, rtol=2e-6, atol=2e-6)  # the same sums, maybe in another order


@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_persistent_forward_walks_every_tile(is_rms):
    """The rows grid is persistent: 4 'SMs' in the interpreter × 1 program walking 13 tiles of 2 rows give
    bit for bit what a grid of one program per tile gives (statistics and h too)."""
    m, n = 25, 40
    x, w, b, dy = _inputs(m, n, torch.float32, True, not is_rms)
    r = _inputs(m, n, torch.float32, False, False, seed=3)[0]
    seed = torch.tensor([5], device=KERNEL_DEVICE)
    walking = KernelConfig(ROWS, 64, 1, block_m=2, programs_per_sm=1, num_stages=2)
    one_per_tile = KernelConfig(ROWS, 64, 1, block_m=2, programs_per_sm=13)
    for residual, p in ((None, 0.0), (r, 0.2)):
        ours = norm_forward(x, w, b, residual, seed, 1e-5, p, 0.0, is_rms, torch.float32, config=walking)
        base = norm_forward(x, w, b, residual, seed, 1e-5, p, 0.0, is_rms, torch.float32, config=one_per_tile)
        for a, e in zip(ours, base):
            assert torch.equal(a, e)  # same arithmetic on the same tiles, only the program order differs
    y_ref, _ = _ref(x, w, b, dy, 1e-5, is_rms)
    _close(norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=walking).y, y_ref, torch.float32)


def test_pipelined_loops_give_bitwise_the_same_results():
    """num_stages > 1 (tl.range's software pipelining of the row loop) only reorders loads: same outputs, bit
    for bit."""
    import dataclasses

    m, n = 9, 40
    x, w, b, dy = _inputs(m, n, torch.float32, True, True)
    plain = (KernelConfig(ROWS, 64, 1, block_m=2), KernelConfig(ROWS, 64, 1, block_m=2))
    piped = tuple(dataclasses.replace(c, num_stages=3) for c in plain)
    results = [_run(x, w, b, dy, 1e-5, False, configs) for configs in (plain, piped)]
    for a, e in zip((*results[0][0], *results[0][1]), (*results[1][0], *results[1][1])):
        assert (a is None and e is None) or torch.equal(a, e)
    y_ref, g = _ref(x, w, b, dy, 1e-5, False)
    _close(results[1][0].y, y_ref, torch.float32)
    _close(results[1][1].dx, g.dx, torch.float32)


def test_long_rows_add_norm_with_dropout_matches_the_whole_row_kernel():
    """Same Philox mask (keyed by the element's index, not the tiling), same h bit for bit, same y."""
    m, n = 4, 40
    x, w, b, _ = _inputs(m, n, torch.bfloat16, True, True)
    r = _inputs(m, n, torch.bfloat16, False, False, seed=1)[0]
    seed = torch.tensor([1234], device=KERNEL_DEVICE)
    for h_dtype in (None, torch.float32, torch.bfloat16):
        for config in (KernelConfig(LONG_ROWS, 16, 1), KernelConfig(CHUNKED, 16, 1)):
            split = norm_forward(x, w, b, r, seed, 1e-5, 0.25, 0.0, False, h_dtype, config=config)
            whole = norm_forward(x, w, b, r, seed, 1e-5, 0.25, 0.0, False, h_dtype)
            if h_dtype is not None:
                assert torch.equal(split.h, whole.h)
            # fp32 statistics merged in a different order: at most one bf16 rounding step apart at |y| ~ 4
            torch.testing.assert_close(split.y.float(), whole.y.float(), atol=3.2e-2, rtol=0)
            assert (split.y != whole.y).float().mean() < 0.05  # and almost always identical


@pytest.mark.parametrize("m,n", [(1, 1), (3, 1), (1, 5), (2, 2)])
def test_tiny_rows(m, n):
    x, w, b, dy = _inputs(m, n, torch.float32, True, True)
    for is_rms in (False, True):
        fwd, bwd = _run(x, w, b, dy, 1e-5, is_rms)
        y_ref, g = _ref(x, w, b, dy, 1e-5, is_rms)
        _close(fwd.y, y_ref, torch.float32)
        _close(bwd.dx, g.dx, torch.float32)
        _close(bwd.dweight, g.dweight, torch.float32, scale=m)


def test_zero_rows():
    x = torch.empty(0, 8, device=KERNEL_DEVICE)
    fwd, bwd = _run(x, torch.ones(8, device=KERNEL_DEVICE), torch.zeros(8, device=KERNEL_DEVICE), x, 1e-5, False)
    assert fwd.y.shape == (0, 8) and bwd.dx.shape == (0, 8)
    assert torch.equal(bwd.dweight.cpu(), torch.zeros(8)) and torch.equal(bwd.dbias.cpu(), torch.zeros(8))


def test_many_programs_with_few_rows_each():
    # More rows than backward programs, rows not divisible by the program count: every row written once.
    m, n = 13, 16
    x, w, b, dy = _inputs(m, n, torch.float32, True, True)
    y_ref, g = _ref(x, w, b, dy, 1e-5, False)
    tile = KernelConfig(ROWS, 16, 1, block_m=4, programs_per_sm=1)
    fwd, bwd = _run(x, w, b, dy, 1e-5, False, (tile, tile))
    _close(fwd.y, y_ref, torch.float32)
    _close(bwd.dx, g.dx, torch.float32)
    _close(bwd.dweight, g.dweight, torch.float32, scale=m)


@pytest.mark.parametrize("mode", list(MODES))
def test_backward_is_bitwise_deterministic(mode):
    x, w, b, dy = _inputs(9, 40, torch.float32, True, True)
    first = _run(x, w, b, dy, 1e-5, False, MODES[mode])[1]
    second = _run(x, w, b, dy, 1e-5, False, MODES[mode])[1]
    for a, c in zip(first, second):
        assert (a is None and c is None) or torch.equal(a, c)  # dresidual: None (not asked for)


def test_chunked_statistics_survive_a_large_mean():
    # Chan's merge of chunk (mean, M2): no E[x²] − E[x]² cancellation at mean 1e4, std 1, in float32.
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 64, generator=g) + 1e4).to(KERNEL_DEVICE)
    for config in (KernelConfig(CHUNKED, 16, 1), LONG_ROWS_CONFIG):
        fwd = norm_forward(x, None, None, None, None, 1e-5, 0.0, 0.0, False, None, config=config)
        y_ref = reference.layer_norm(x.double().cpu(), (64,), eps=1e-5)
        torch.testing.assert_close(fwd.y.double().cpu(), y_ref, atol=2e-3, rtol=0)  # fp32 x itself is ±5e-4 off


@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_long_rows_merge_in_the_kernel_matches_tokennorm_moments(is_rms):
    """The long-row kernel merges the row's segment moments itself with tokennorm.moments' formula: on rows far
    off centre, the same statistics as that merge of the segments' moments in float64 — to float32 roundoff,
    since the segments publish their means as hi + lo pairs (float32 means alone would cost ~1e-5 there)."""
    from tokennorm import moments

    g = torch.Generator().manual_seed(4)
    x = (torch.randn(5, 37, generator=g) + 1e4).to(KERNEL_DEVICE)
    x64 = x.double().cpu()
    pieces = [x64[:, a:b] for a, b in ((0, 16), (16, 32), (32, 37))]  # the kernel's segments of 16, 16 and 5
    count = torch.tensor([16.0, 16.0, 5.0], dtype=torch.float64)
    seg_mean = torch.stack([p.mean(1) for p in pieces])  # [3, rows]
    seg_m2 = torch.stack(
        [(p.square().sum(1) if is_rms else (p - p.mean(1, keepdim=True)).square().sum(1)) for p in pieces]
    )
    if is_rms:
        rstd_ref = 1 / torch.sqrt(seg_m2.sum(0) / 37 + 1e-5)
    else:
        mean_ref, m2_ref = moments.merge_moments(seg_mean, seg_m2, count)
        rstd_ref = 1 / torch.sqrt(m2_ref / 37 + 1e-5)
    out = norm_forward(x, None, None, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=LONG_ROWS_CONFIG)
    torch.testing.assert_close(out.rstd.double().cpu(), rstd_ref, rtol=4 * 2**-24, atol=0)
    if not is_rms:
        torch.testing.assert_close(out.mean.double().cpu(), mean_ref, rtol=2**-24, atol=0)
    y_ref = (reference.rms_norm if is_rms else reference.layer_norm)(x64, (37,), eps=1e-5)
    torch.testing.assert_close(out.y.double().cpu(), y_ref, atol=2e-3, rtol=0)  # fp32 x itself is ±5e-4 off


@pytest.mark.parametrize(
    "config",
    [KernelConfig(CHUNKED, 16, 1), KernelConfig(CHUNKED, 32, 1), LONG_ROWS_CONFIG],
    ids=["chunked16", "chunked32", "long_rows"],
)
def test_chunked_statistics_of_a_constant_row_are_exact(config):
    """Chunk statistics merged with Chan's formula (and segments merged in the long-row kernel): a constant row
    (65 columns, a partial last chunk) has its value as mean and variance 0 exactly, so y is β bit for bit, as
    torch's own LayerNorm gives."""
    x = torch.full((3, 65), 3.7).to(KERNEL_DEVICE)
    x[1] = -1234.5
    w = torch.randn(65).to(KERNEL_DEVICE)
    b = torch.randn(65).to(KERNEL_DEVICE)
    out = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None, config=config)
    assert torch.equal(out.mean.cpu(), x[:, 0].cpu())
    assert torch.equal(out.y.cpu(), b.cpu().expand(3, 65))
    assert torch.equal(out.y.cpu(), torch.nn.functional.layer_norm(x.cpu(), (65,), w.cpu(), b.cpu(), 1e-5))


def test_chunked_statistics_match_the_whole_row_kernel():
    """Chunk moments merged vs the whole row in registers: the same statistics to float32 rounding."""
    x, w, b, _ = _inputs(6, 100, torch.float32, True, True)
    whole = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None)
    for config in (KernelConfig(CHUNKED, 16, 1), KernelConfig(CHUNKED, 32, 1), LONG_ROWS_CONFIG):
        chunked = norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None, config=config)
        torch.testing.assert_close(chunked.mean, whole.mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(chunked.rstd, whole.rstd, rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_long_rows_default_backward_matches_the_reference(monkeypatch, request, is_rms):
    """The default long-row backward end to end (thresholds shrunk so that 37 columns are 'long'): 5 segments
    of 8, dx and dγ/dβ against float64, bitwise the same on a second run."""
    monkeypatch.setattr(kconfig, "BWD_ROWS_MAX_N", 16)
    monkeypatch.setattr(kconfig, "BWD_LONG_ROWS", KernelConfig(LONG_ROWS, 8, 1, programs_per_sm=2))
    backward_config.cache_clear()
    request.addfinalizer(backward_config.cache_clear)
    from tokennorm.kernels import plan

    plan.backward_plan.cache_clear()
    request.addfinalizer(plan.backward_plan.cache_clear)
    m, n = 6, 37
    assert backward_config(n).mode == LONG_ROWS and kconfig.long_rows_segments(n, backward_config(n)) == 5
    x, w, b, dy = _inputs(m, n, torch.float32, True, not is_rms)
    _, g = _ref(x, w, b, dy, 1e-5, is_rms)
    first, second = (_run(x, w, b, dy, 1e-5, is_rms)[1] for _ in range(2))
    _close(first.dx, g.dx, torch.float32)
    _close(first.dweight, g.dweight, torch.float32, scale=m)
    if not is_rms:
        _close(first.dbias, g.dbias, torch.float32, scale=m)
    for a, c in zip(first, second):
        assert (a is None and c is None) or torch.equal(a, c)  # dresidual: None (not asked for)


@pytest.mark.gpu
def test_more_than_2_to_the_31_elements():
    m, n = 2**31 // 4096 + 3, 4096
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    out = norm_forward(x, None, None, None, None, 1e-5, 0.0, 0.0, False, None)
    tail = x[-3:].double()
    y_ref = reference.layer_norm(tail, (n,), eps=1e-5)
    torch.testing.assert_close(out.y[-3:].double(), y_ref, atol=6e-2, rtol=0)
    # Backward addresses the same far rows: dx there must match the float64 reference too.
    dy = torch.randn_like(x)
    dx = norm_backward(dy, x, None, out.mean, out.rstd, None, None, 0.0, 0.0, False, False, False, x.dtype, None).dx
    dx_ref = reference.layer_norm_backward(dy[-3:].double(), tail, (n,), None, None, 1e-5).dx
    torch.testing.assert_close(dx[-3:].double(), dx_ref, atol=6e-2, rtol=2e-2)
