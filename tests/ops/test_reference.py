"""tokennorm.reference, the oracle: its hand-written backward against autograd, its forward against torch,
its numerics under catastrophic cancellation, and its default RMSNorm ε against what torch really uses."""

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS

import tokennorm
from tokennorm import reference as R

F64 = torch.float64
# Explicit backward vs autograd, both in float64: the same formulas summed in a different order. Rounding is
# ~n·2^-53 relative, amplified by rstd (at most 1/sqrt(ε) ≈ 316 for ε = 1e-5): 1e-9 leaves a wide margin
# while any wrong term in a formula is off by O(1).
F64_TOL = dict(rtol=1e-9, atol=1e-11)

# (input shape, normalized_shape): 1-element rows, a prime N, multi-dim normalized_shape.
SHAPES = [((1, 1), (1,)), ((5, 7), (7,)), ((3, 37), (37,)), ((2, 3, 4, 5), (4, 5)), ((2, 3, 4), (2, 3, 4))]


def _rand(shape, seed, dtype=F64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dtype)


def _params(ns, affine, with_bias, seed):
    weight = _rand(ns, seed + 1, shift=1.0) if affine else None
    bias = _rand(ns, seed + 2) if affine and with_bias else None
    return weight, bias


def _autograd(fn, dy, *tensors):
    """Gradients of sum(fn(*tensors) · dy) w.r.t. each tensor that is not None (None stays None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], dy)
    it = iter(grads)
    return [None if t is None else next(it) for t in leaves]


def _close_or_none(actual, expected, **tol):
    assert (actual is None) == (expected is None)
    if expected is not None:
        torch.testing.assert_close(actual, expected, **tol)


@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine,with_bias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("weight_offset", [0.0, 1.0])
def test_layer_norm_backward_matches_autograd(shape, ns, affine, with_bias, weight_offset):
    x, dy = _rand(shape, 0), _rand(shape, 1)
    weight, bias = _params(ns, affine, with_bias, 10)
    eps = 1e-5
    expected = _autograd(lambda x, w, b: R.layer_norm(x, ns, w, b, eps, weight_offset), dy, x, weight, bias)
    got = R.layer_norm_backward(dy, x, ns, weight, bias, eps, weight_offset)
    _close_or_none(got.dx, expected[0], **F64_TOL)
    _close_or_none(got.dweight, expected[1], **F64_TOL)
    _close_or_none(got.dbias, expected[2], **F64_TOL)


@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps,weight_offset", [(None, 0.0), (1e-6, 1.0)])
def test_rms_norm_backward_matches_autograd(shape, ns, affine, eps, weight_offset):
    x, dy = _rand(shape, 2), _rand(shape, 3)
    weight, _ = _params(ns, affine, False, 20)
    expected = _autograd(lambda x, w: R.rms_norm(x, ns, w, eps, weight_offset), dy, x, weight)
    got = R.rms_norm_backward(dy, x, ns, weight, eps, weight_offset)
    assert got.dbias is None
    _close_or_none(got.dx, expected[0], **F64_TOL)
    _close_or_none(got.dweight, expected[1], **F64_TOL)


@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine,with_bias", [(True, True), (False, False)])
def test_backward_matches_torch_autograd(shape, ns, affine, with_bias):
    """The explicit backward also matches autograd through torch's own kernels, not only through ours."""
    x, dy = _rand(shape, 4), _rand(shape, 5)
    weight, bias = _params(ns, affine, with_bias, 30)
    ln = _autograd(lambda x, w, b: F.layer_norm(x, ns, w, b, 1e-5), dy, x, weight, bias)
    got = R.layer_norm_backward(dy, x, ns, weight, bias, 1e-5)
    for g, e in zip((got.dx, got.dweight, got.dbias), ln):
        _close_or_none(g, e, **F64_TOL)
    rms = _autograd(lambda x, w: F.rms_norm(x, ns, w, 1e-5), dy, x, weight)
    got = R.rms_norm_backward(dy, x, ns, weight, 1e-5)
    for g, e in zip((got.dx, got.dweight), rms):
        _close_or_none(g, e, **F64_TOL)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("with_dh", [True, False])
def test_add_norm_backward_matches_autograd(norm, with_residual, dropout_p, with_dh):
    shape, ns = (3, 4, 6), (6,)
    x, dy, dh = _rand(shape, 6), _rand(shape, 7), _rand(shape, 8)
    residual = _rand(shape, 9) if with_residual else None
    weight, bias = _params(ns, True, True, 40)
    g = torch.Generator().manual_seed(11)
    keep = (torch.rand(shape, generator=g) >= dropout_p) if dropout_p else None
    kw = dict(norm=norm, keep_mask=keep, dropout_p=dropout_p, weight_offset=0.5)

    leaves = [None if t is None else t.clone().requires_grad_() for t in (x, residual, weight, bias)]
    y, h = R.add_norm(leaves[0], leaves[1], ns, leaves[2], leaves[3], 1e-5, **kw)
    loss = (y * dy).sum() + ((h * dh).sum() if with_dh else 0.0)
    expected = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    if residual is None:
        expected = (expected[0], None, *expected[1:])

    got = R.add_norm_backward(dy, dh if with_dh else None, h.detach(), x, residual, ns, weight, bias, 1e-5, **kw)
    for name, actual, exp in zip(
        ("dx", "dresidual", "dweight", "dbias"), (got.dx, got.dresidual, got.dweight, got.dbias), expected
    ):
        _close_or_none(actual, exp, **F64_TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_add_norm_rmsnorm_applies_bias():
    """tokennorm.add_norm gives RMSNorm a bias (y = RMSNorm(h)·γ + β); the oracle must not silently drop it."""
    x, residual = _rand((3, 6), 17), _rand((3, 6), 18)
    weight, bias = _params((6,), True, True, 60)
    y, h = R.add_norm(x, residual, (6,), weight, bias, 1e-5, norm="rmsnorm")
    torch.testing.assert_close(y, R.rms_norm(residual + x, (6,), weight, 1e-5) + bias, **F64_TOL)
    got = R.add_norm_backward(torch.ones_like(y), None, h, x, residual, (6,), weight, bias, 1e-5, norm="rmsnorm")
    torch.testing.assert_close(got.dbias, torch.full((6,), 3.0, dtype=F64), **F64_TOL)


@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_forward_matches_torch_in_float64(shape, ns, affine):
    x = _rand(shape, 12, scale=3.0, shift=0.5)
    weight, bias = _params(ns, affine, True, 50)
    torch.testing.assert_close(R.layer_norm(x, ns, weight, bias), F.layer_norm(x, ns, weight, bias), **F64_TOL)
    for eps in (None, 1e-6):
        torch.testing.assert_close(R.rms_norm(x, ns, weight, eps), F.rms_norm(x, ns, weight, eps), **F64_TOL)


# --- catastrophic cancellation: mean 1e4, std 1 -----------------------------------------------------------
# In float32 the input's mean itself is only representable to half an ulp of 1e4 (4.9e-4), so x − mean and
# hence y (std 1) carry errors of that size whatever the algorithm. 4 ulps of 1e4 (3.9e-3) allows for that
# plus summation error; the naive E[x²] − E[x]² loses all of the variance (ulp of 1e8 is 8) and misses by O(1).
CANCELLATION_ATOL = 4 * torch.finfo(torch.float32).eps * 2**13
N_CANCEL = 256


def _cancellation_case(dtype=torch.float32):
    x = _rand((6, N_CANCEL), 13, scale=1.0, shift=1e4).to(dtype)
    return x, x.to(F64)  # the float32 values, exactly, in float64


def test_naive_variance_fails_the_cancellation_bound():
    """The bound below is tight enough to catch the one-pass formula E[x²] − E[x]²."""
    x, x64 = _cancellation_case()
    mean = x.mean(-1, keepdim=True)
    naive = (x - mean) / torch.sqrt((x * x).mean(-1, keepdim=True) - mean * mean + 1e-5)
    err = (naive.to(F64) - F.layer_norm(x64, (N_CANCEL,))).abs()
    assert not (err.nan_to_num(nan=float("inf")).max() <= CANCELLATION_ATOL)


def test_reference_survives_cancellation():
    x, x64 = _cancellation_case()
    torch.testing.assert_close(
        R.layer_norm(x, (N_CANCEL,)).to(F64), F.layer_norm(x64, (N_CANCEL,)), rtol=0, atol=CANCELLATION_ATOL
    )
    dy = _rand(x.shape, 14, dtype=torch.float32)
    got = R.layer_norm_backward(dy, x, (N_CANCEL,))
    exp = R.layer_norm_backward(dy.to(F64), x64, (N_CANCEL,))
    torch.testing.assert_close(got.dx.to(F64), exp.dx, rtol=0, atol=CANCELLATION_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_survives_cancellation(backend, request):
    request.getfixturevalue(backend)
    x, x64 = _cancellation_case()
    dy = _rand(x.shape, 15, dtype=torch.float32)
    leaf = x.clone().requires_grad_()
    y = tokennorm.layer_norm(leaf, (N_CANCEL,))
    y.backward(dy)
    exp = R.layer_norm_backward(dy.to(F64), x64, (N_CANCEL,))
    torch.testing.assert_close(y.detach().to(F64), R.layer_norm(x64, (N_CANCEL,)), rtol=0, atol=CANCELLATION_ATOL)
    torch.testing.assert_close(leaf.grad.to(F64), exp.dx, rtol=0, atol=CANCELLATION_ATOL)


def test_constant_rows_normalize_to_the_bias_in_float32():
    """A constant row has var = 0, so y = β exactly; torch gets that exactly. A mean that is one ulp off
    (Σx/n rounded) is amplified by rstd = 1/sqrt(ε) ≈ 316 into an error of ~1e-4."""
    x = torch.tensor([[0.1] * 7, [0.3] * 7, [2.7] * 7])
    bias = torch.tensor([0.25] * 7)
    assert torch.equal(F.layer_norm(x, (7,), None, bias), bias.expand(3, 7))
    # A few float32 ulps of β would be rounding; 1e-4 is the mean's error times rstd.
    torch.testing.assert_close(R.layer_norm(x, (7,), None, bias), bias.expand(3, 7), rtol=0, atol=1e-6)


# --- torch's default RMSNorm ε ------------------------------------------------------------------------------
# A plausible wrong default for each dtype: finfo of the input dtype itself for bf16/fp16, the other of
# float32/float64 for those. The test inputs are scaled so that mean(x²) is comparable to the right ε.
WRONG_EPS = {
    torch.float64: torch.finfo(torch.float32).eps,
    torch.float32: torch.finfo(torch.float64).eps,
    torch.bfloat16: torch.finfo(torch.bfloat16).eps,
    torch.float16: torch.finfo(torch.float16).eps,
}


@pytest.mark.parametrize("dtype", list(WRONG_EPS))
def test_default_rms_eps_is_what_torch_uses(dtype):
    eps = R.default_rms_eps(dtype)
    x = _rand((4, 16), 16, scale=eps**0.5).to(dtype)  # mean(x²) ≈ ε: the output depends on ε by ~30%
    torch_default = F.rms_norm(x, (16,), eps=None)
    assert torch.equal(torch_default, F.rms_norm(x, (16,), eps=eps))
    assert not torch.allclose(torch_default, F.rms_norm(x, (16,), eps=WRONG_EPS[dtype]), rtol=0.05, atol=0)
    torch.testing.assert_close(R.rms_norm(x, (16,), eps=None), torch_default)
