"""The oracle of issue 18's ops (AdaLN / AdaLN-Zero, DyT and Add & DyT, channels-first LayerNorm): each
hand-written backward in tokennorm.reference against autograd in float64, every input's gradient, over shapes
drawn by hypothesis; and each forward against an independent torch composition."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tokennorm import reference as R

F64 = torch.float64
# As tests/ops/test_reference.py: the same formulas summed in another order, ~n·2^-53 relative, amplified by
# rstd ≤ 1/sqrt(ε); any wrong term is off by O(1).
F64_TOL = dict(rtol=1e-9, atol=1e-11)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _rand(shape, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64) + shift


def _grads(fn, outputs_grads, tensors):
    """Autograd gradients of Σ out·g over fn's outputs w.r.t. each tensor (None stays None)."""
    leaves = {k: None if t is None else t.detach().clone().requires_grad_() for k, t in tensors.items()}
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, outputs_grads) if g is not None]
    wanted = [t for t in leaves.values() if t is not None]
    got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
    it = iter(got)
    return {k: None if t is None else next(it) for k, t in leaves.items()}


def _close(name, actual, expected):
    assert (actual is None) == (expected is None), name
    if expected is not None:
        torch.testing.assert_close(actual, expected, **F64_TOL, msg=lambda m: f"{name}: {m}")


@st.composite
def ada_cases(draw):
    batch = draw(st.integers(1, 3))
    tokens = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))  # [B, C], [B, N, C], [B, H, W, C]
    c = draw(st.sampled_from([1, 2, 7, 16, 37]))
    return dict(
        shape=(batch, *tokens, c),
        per_token=draw(st.booleans()),  # modulations [B, …, C] instead of [B, C]
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        gate=draw(st.booleans()),
        residual=draw(st.booleans()),
        weight=draw(st.booleans()),
        bias=draw(st.booleans()),
        dh=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )


@SETTINGS
@given(ada_cases())
def test_ada_norm_backward_matches_autograd(case):
    shape, seed = case["shape"], case["seed"]
    mod_shape = shape if case["per_token"] else (shape[0], shape[-1])
    c = shape[-1]
    tensors = dict(
        x=_rand(shape, seed),
        shift=_rand(mod_shape, seed + 1),
        scale=0.5 * _rand(mod_shape, seed + 2),
        gate=_rand(mod_shape, seed + 3) if case["gate"] else None,
        residual=_rand(shape, seed + 4) if case["residual"] else None,
        weight=_rand((c,), seed + 5, shift=1.0) if case["weight"] else None,
        bias=_rand((c,), seed + 6) if case["bias"] else None,
    )
    dy, dh = _rand(shape, seed + 7), (_rand(shape, seed + 8) if case["dh"] else None)
    norm = case["norm"]

    def fn(**t):
        return R.ada_norm(
            t["x"],
            t["shift"],
            t["scale"],
            gate=t["gate"],
            residual=t["residual"],
            norm=norm,
            weight=t["weight"],
            bias=t["bias"],
            eps=1e-5,
        )

    expected = _grads(fn, (dy, dh), tensors)
    got = R.ada_norm_backward(
        dy,
        dh,
        tensors["x"],
        tensors["shift"],
        tensors["scale"],
        gate=tensors["gate"],
        residual=tensors["residual"],
        norm=norm,
        weight=tensors["weight"],
        bias=tensors["bias"],
        eps=1e-5,
    )
    for name in ("x", "residual", "shift", "scale", "gate", "weight", "bias"):
        _close("d" + name, getattr(got, "d" + name), expected[name])


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_ada_norm_forward_is_the_dit_composition(norm):
    """An independent composition, as DiT / diffusers write it: h = r + g·x; Norm(h)·(1 + scale) + shift."""
    x, r = _rand((2, 5, 8), 0), _rand((2, 5, 8), 1)
    shift, scale, gate = _rand((2, 8), 2), _rand((2, 8), 3), _rand((2, 8), 4)
    w, b = _rand((8,), 5, 1.0), _rand((8,), 6)
    h = r + gate[:, None] * x
    if norm == "layernorm":
        n = F.layer_norm(h, (8,), w, b, 1e-6)
    else:
        n = F.rms_norm(h, (8,), w, 1e-6) + b
    want = n * (1 + scale[:, None]) + shift[:, None]
    y, got_h = R.ada_norm(x, shift, scale, gate=gate, residual=r, norm=norm, weight=w, bias=b, eps=1e-6)
    torch.testing.assert_close(got_h, h, **F64_TOL)
    torch.testing.assert_close(y, want, **F64_TOL)


def test_ada_norm_rounds_h_to_the_residual_dtype_and_y_to_x_dtype():
    x = _rand((2, 3, 16), 0).to(torch.bfloat16)
    r = _rand((2, 3, 16), 1).float()
    y, h = R.ada_norm(x, torch.zeros(2, 16), torch.zeros(2, 16), residual=r)
    assert (y.dtype, h.dtype) == (torch.bfloat16, torch.float32)
    torch.testing.assert_close(h, r + x.float(), rtol=0, atol=0)


@st.composite
def dyt_cases(draw):
    lead = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    trailing = draw(st.sampled_from([(1,), (5,), (16,), (3, 4)]))
    return dict(
        shape=(*lead, *trailing),
        trailing=trailing,
        weight=draw(st.booleans()),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        dh=draw(st.booleans()),
        alpha=draw(st.floats(0.05, 2.0)),
        seed=draw(st.integers(0, 1000)),
    )


@SETTINGS
@given(dyt_cases())
def test_dyt_backward_matches_autograd(case):
    shape, trailing, seed = case["shape"], case["trailing"], case["seed"]
    tensors = dict(
        x=2 * _rand(shape, seed),
        alpha=torch.full((1,), case["alpha"], dtype=F64),
        weight=_rand(trailing, seed + 1, 1.0) if case["weight"] else None,
        bias=_rand(trailing, seed + 2) if case["bias"] else None,
    )
    dy = _rand(shape, seed + 3)
    expected = _grads(lambda **t: R.dyt(t["x"], t["alpha"], t["weight"], t["bias"]), (dy,), tensors)
    got = R.dyt_backward(dy, tensors["x"], tensors["alpha"], tensors["weight"], tensors["bias"])
    for name in ("x", "alpha", "weight", "bias"):
        _close("d" + name, getattr(got, "d" + name), expected[name])


@SETTINGS
@given(dyt_cases())
def test_add_dyt_backward_matches_autograd(case):
    shape, trailing, seed = case["shape"], case["trailing"], case["seed"]
    tensors = dict(
        x=_rand(shape, seed),
        residual=_rand(shape, seed + 4) if case["residual"] else None,
        alpha=torch.full((1,), case["alpha"], dtype=F64),
        weight=_rand(trailing, seed + 1, 1.0) if case["weight"] else None,
        bias=_rand(trailing, seed + 2) if case["bias"] else None,
    )
    dy, dh = _rand(shape, seed + 3), (_rand(shape, seed + 5) if case["dh"] else None)
    expected = _grads(
        lambda **t: R.add_dyt(t["x"], t["residual"], t["alpha"], t["weight"], t["bias"]), (dy, dh), tensors
    )
    got = R.add_dyt_backward(
        dy, dh, tensors["x"], tensors["residual"], tensors["alpha"], tensors["weight"], tensors["bias"]
    )
    for name in ("x", "residual", "alpha", "weight", "bias"):
        _close("d" + name, getattr(got, "d" + name), expected[name])


def test_dyt_forward_is_the_papers_formula():
    x, w, b = _rand((3, 6), 0), _rand((6,), 1), _rand((6,), 2)
    want = torch.tanh(0.7 * x) * w + b  # DynamicTanh.forward, channels_last
    torch.testing.assert_close(R.dyt(x, 0.7, w, b), want, **F64_TOL)
    torch.testing.assert_close(R.dyt(x, torch.tensor([0.7], dtype=F64), w, b), want, **F64_TOL)
    assert R.dyt_backward(torch.ones_like(x), x, 0.7, w, b).dalpha is None  # a Python α has no gradient


@SETTINGS
@given(
    st.integers(1, 3),
    st.sampled_from([1, 3, 8]),
    st.lists(st.integers(1, 4), min_size=0, max_size=3),
    st.booleans(),
    st.booleans(),
    st.integers(0, 1000),
)
def test_layer_norm_channels_first_backward_matches_autograd(batch, c, spatial, affine, with_bias, seed):
    shape = (batch, c, *spatial)
    tensors = dict(
        x=_rand(shape, seed, shift=3.0),
        weight=_rand((c,), seed + 1, 1.0) if affine else None,
        bias=_rand((c,), seed + 2) if affine and with_bias else None,
    )
    dy = _rand(shape, seed + 3)
    expected = _grads(lambda **t: R.layer_norm_channels_first(t["x"], t["weight"], t["bias"], 1e-5), (dy,), tensors)
    got = R.layer_norm_channels_first_backward(dy, tensors["x"], tensors["weight"], tensors["bias"], 1e-5)
    for name in ("x", "weight", "bias"):
        _close("d" + name, getattr(got, "d" + name), expected[name])


def test_layer_norm_channels_first_forward_is_convnexts_formula():
    """ConvNeXt's own channels_first branch: u = mean over dim 1, s = biased variance, (x − u)/sqrt(s + ε)·w + b."""
    x, w, b = _rand((2, 5, 3, 4), 0, shift=2.0), _rand((5,), 1), _rand((5,), 2)
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    want = w[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + b[:, None, None]
    got = R.layer_norm_channels_first(x, w, b, 1e-6)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, **F64_TOL)
