"""tokennorm.ada_norm and AdaLNZero: against the float64 reference (values and every gradient, each dtype), against
the DiT/diffusers eager composition, torch-style errors, edge inputs, and diffusers' AdaLayerNormZero chunk order."""

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm import reference as R

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
# Unit roundoff of each dtype; a result passes within K_FWD / K_BWD roundoffs of its largest term (as
# `tokennorm verify` does): y and the gradients are rounded once to the dtype after float32 math (≤ 1 u), plus
# the rounding of h to the dtype, and float32 sums over ≤ 48 terms for the per-sample dshift/dscale/dgate.
U = {F64: 2.0**-53, F32: 2.0**-24, BF16: 2.0**-8, F16: 2.0**-11}
K_FWD, K_BWD = 4, 8


def _randn(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype)


def _assert_scaled(name, got, ref, dtype, k, magnitude):
    err = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    bound = k * max(U[dtype], 2.0**-40) * magnitude  # float64 paths: the float64 reference's own summation order
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} ({k} u × {magnitude:.3g})"


def _case(dtype, per_token, gate, residual, affine, seed=0, shape=(3, 4, 16)):
    b, c = shape[0], shape[-1]
    mod = shape if per_token else (b, c)
    p_dtype = F32 if dtype in (BF16, F16) else dtype  # float32 parameters with low-precision x, as torch allows
    return dict(
        x=_randn(shape, dtype, seed),
        shift=_randn(mod, dtype, seed + 1),
        scale=_randn(mod, dtype, seed + 2, 0.5),
        gate=_randn(mod, dtype, seed + 3) if gate else None,
        residual=_randn(shape, F32 if dtype in (BF16, F16) else dtype, seed + 4) if residual else None,
        weight=(1 + _randn((c,), p_dtype, seed + 5, 0.1)) if affine else None,
        bias=_randn((c,), p_dtype, seed + 6, 0.1) if affine else None,
    )


def _run_ours(t, norm, dy, dh):
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in t.items()}
    y, h = tokennorm.ada_norm(
        leaves["x"],
        leaves["shift"],
        leaves["scale"],
        gate=leaves["gate"],
        residual=leaves["residual"],
        norm=norm,
        weight=leaves["weight"],
        bias=leaves["bias"],
        prenorm=True,
    )
    torch.autograd.backward([y, h], [dy, dh.to(h.dtype)])
    return y, h, {"d" + k: v.grad for k, v in leaves.items() if v is not None}


def _grad_magnitude(name, t, dy, dh):
    """The largest term a gradient is summed from (rounding scales with it, not with the result): rstd·|dy|·(1 +
    |scale|)·|w| for dx and dresidual, |dy| over a batch item's tokens for dshift, |dy·n| for dscale and dweight."""
    x = t["x"] if t["gate"] is None else t["x"] * (t["gate"] if t["gate"].shape == t["x"].shape else t["gate"][:, None])
    h = x if t["residual"] is None else x + t["residual"]
    rstd = torch.rsqrt(h.var(-1, correction=0, keepdim=True) + 1e-5).max().item()
    s = t["scale"] if t["scale"].shape == t["x"].shape else t["scale"][:, None]
    w = 1.0 if t["weight"] is None else t["weight"].abs().max().item()
    d_n = (dy.abs() * (1 + s.abs())).max().item() * w
    per_item = t["x"].shape[1] if t["shift"].shape != t["x"].shape else 1  # tokens summed per modulation entry
    terms = {
        "dx": (rstd * d_n + dh.abs().max().item()) * (1.0 if t["gate"] is None else t["gate"].abs().max().item()),
        "dresidual": rstd * d_n + dh.abs().max().item(),
        "dshift": per_item * dy.abs().max().item(),
        "dscale": per_item * dy.abs().max().item() * (rstd * h.abs().max().item() * w + 1),
        "dgate": per_item * (rstd * d_n + dh.abs().max().item()) * t["x"].abs().max().item(),
        "dweight": dy.abs().sum((0, 1)).max().item() * (1 + s.abs().max().item()) * rstd * h.abs().max().item(),
        "dbias": dy.abs().sum((0, 1)).max().item() * (1 + s.abs().max().item()),
    }
    return terms[name]


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize(
    "per_token,gate,residual,affine",
    [
        (False, True, True, False),  # AdaLN-Zero, DiT: [B, C] vectors, gated residual
        (True, True, True, True),  # per-token modulations, norm affine
        (False, False, False, True),  # AdaLayerNormContinuous: no residual, affine norm
        (False, True, False, False),  # gate only
    ],
)
def test_matches_the_float64_reference_with_gradients(dtype, norm, per_token, gate, residual, affine):
    t = _case(dtype, per_token, gate, residual, affine)
    dy, dh = _randn(t["x"].shape, dtype, 50), _randn(t["x"].shape, dtype, 51)
    y, h, grads = _run_ours(t, norm, dy, dh)
    assert y.dtype == dtype and h.dtype == (t["residual"].dtype if residual else dtype)

    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    y_ref, h_ref = R.ada_norm(**t64, norm=norm)
    # h is computed in the reference from the same rounded inputs; it is rounded once to its dtype
    _assert_scaled("h", h, h_ref, h.dtype, 1, h_ref.abs().max().item())
    y_mag = y_ref.abs().max().item() + 1.0
    _assert_scaled("y", y, y_ref, dtype, K_FWD, y_mag)
    g = R.ada_norm_backward(dy.double(), dh.double(), **t64, norm=norm)
    for name, got in grads.items():
        ref = getattr(g, name)
        assert got.dtype == t[name[1:]].dtype, name
        _assert_scaled(name, got, ref, got.dtype, K_BWD, _grad_magnitude(name, t64, dy.double(), dh.double()))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_equals_the_eager_dit_composition_in_float32(norm):
    x, r = _randn((2, 6, 32), F32, 0), _randn((2, 6, 32), F32, 1)
    shift, scale, gate = (_randn((2, 32), F32, s) for s in (2, 3, 4))
    h = r + gate[:, None] * x
    n = F.layer_norm(h, (32,), eps=1e-6) if norm == "layernorm" else F.rms_norm(h, (32,), eps=1e-6)
    want = n * (1 + scale[:, None]) + shift[:, None]
    y, got_h = tokennorm.ada_norm(x, shift, scale, gate=gate, residual=r, norm=norm, eps=1e-6, prenorm=True)
    torch.testing.assert_close(got_h, h, rtol=0, atol=0)
    torch.testing.assert_close(y, want, rtol=2e-6, atol=2e-6)


def test_eps_defaults_follow_the_norm():
    x = _randn((2, 3, 8), F32, 0) * 1e-3  # small tokens: ε shows
    zero = torch.zeros(2, 8)
    torch.testing.assert_close(tokennorm.ada_norm(x, zero, zero), F.layer_norm(x, (8,), eps=1e-5))
    torch.testing.assert_close(tokennorm.ada_norm(x, zero, zero, norm="rmsnorm"), F.rms_norm(x, (8,)))


def test_inputs_are_not_modified_and_h_is_never_x():
    t = _case(F32, False, True, True, True)
    before = {k: v.clone() for k, v in t.items()}
    tokennorm.ada_norm(**t, prenorm=True)
    for k, v in t.items():
        assert torch.equal(v, before[k]), k
    x = t["x"]
    _, h = tokennorm.ada_norm(x, t["shift"], t["scale"], prenorm=True)
    assert torch.equal(h, x) and h.data_ptr() != x.data_ptr()


def test_empty_one_element_rows_non_contiguous_and_nan_as_the_composition():
    # empty batch and empty token dims
    for shape in [(0, 4, 8), (2, 0, 8)]:
        y = tokennorm.ada_norm(torch.randn(shape), torch.randn(shape[0], 8), torch.randn(shape[0], 8))
        assert y.shape == shape
    # one-element rows: LayerNorm gives 0, so y = shift
    shift = torch.randn(3, 1)
    torch.testing.assert_close(
        tokennorm.ada_norm(torch.randn(3, 5, 1), shift, torch.randn(3, 1)), shift[:, None].expand(3, 5, 1)
    )
    # non-contiguous x, residual and modulations
    base = _randn((4, 6, 10), F32, 3)
    x, r = base.transpose(0, 1)[:, :3], _randn((6, 4, 10), F32, 4).transpose(0, 1)[:3].transpose(0, 1)
    mods = _randn((10, 6), F32, 5).t()
    y, h = tokennorm.ada_norm(x, mods, mods, gate=mods, residual=r, prenorm=True)
    y2, h2 = tokennorm.ada_norm(
        x.contiguous(),
        mods.contiguous(),
        mods.contiguous(),
        gate=mods.contiguous(),
        residual=r.contiguous(),
        prenorm=True,
    )
    torch.testing.assert_close((y, h), (y2, h2), rtol=0, atol=0)
    # NaN and inf stay in their token, as in the composition
    x = torch.randn(2, 3, 4)
    x[0, 1, 2], x[1, 0, 0] = float("nan"), float("inf")
    y = tokennorm.ada_norm(x, torch.zeros(2, 4), torch.zeros(2, 4))
    torch.testing.assert_close(y, F.layer_norm(x, (4,)), equal_nan=True)
    assert y[0, 1].isnan().all() and y[0, 0].isfinite().all() and y[1, 1].isfinite().all()


BAD = [
    (dict(norm="batchnorm"), ValueError, "norm must be one of"),
    (dict(shift=torch.randn(2, 1, 8)), RuntimeError, r"Expected shift of shape \[2, 8\]"),
    (dict(scale=torch.randn(3, 8)), RuntimeError, "Expected scale of shape"),
    (dict(gate=torch.ones(2, 8, dtype=torch.long)), TypeError, "gate must be a floating-point tensor"),
    (dict(residual=torch.randn(2, 4, 7)), RuntimeError, "Expected residual to have the shape of x"),
    (dict(weight=torch.ones(7)), RuntimeError, "Expected weight to be of same shape"),
    (dict(weight=torch.ones(8, dtype=F64)), RuntimeError, "mixed dtype: expected weight"),
    (dict(x=torch.ones(2, 4, 8, dtype=torch.long)), NotImplementedError, "not implemented for 'Long'"),
    (dict(x=torch.randn(8)), RuntimeError, "at least 2-D"),
    (dict(shift=[0.0] * 8), TypeError, "shift must be a Tensor"),
]


@pytest.mark.parametrize("change,error,match", BAD)
def test_bad_input_raises_torchs_error_type_naming_the_argument(change, error, match):
    args = dict(x=torch.randn(2, 4, 8), shift=torch.randn(2, 8), scale=torch.randn(2, 8))
    args.update(change)
    x, shift, scale = args.pop("x"), args.pop("shift"), args.pop("scale")
    with pytest.raises(error, match=match):
        tokennorm.ada_norm(x, shift, scale, **args)


def test_adalnzero_starts_as_the_identity_and_its_chunks_are_per_sublayer():
    adaln = tokennorm.AdaLNZero(16, 8, num_sublayers=3)
    cond = torch.randn(2, 8)
    mods = adaln(cond)
    assert len(mods) == 3 and all(t.shape == (2, 16) and not t.any() for m in mods for t in m)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(adaln.normalize(x, mods[0]), F.layer_norm(x, (16,), eps=1e-6))
    with torch.no_grad():
        adaln.linear.bias.copy_(torch.arange(3 * 3 * 16, dtype=F32))
    m = adaln(cond)
    for i, name in enumerate(["shift", "scale", "gate"] * 3):  # chunk k of the Linear's output is the k-th vector
        assert torch.equal(getattr(m[i // 3], name)[0], torch.arange(16 * i, 16 * (i + 1), dtype=F32)), (i, name)
    with pytest.raises(ValueError, match=r"cond of shape \[batch, 8\]"):
        adaln(torch.randn(2, 3, 8))


def test_adalnzero_gradients_reach_the_projection():
    """Zero-initialised, yet trainable: the first step's gradient of the projection is not zero (DiT relies on it)."""
    adaln = tokennorm.AdaLNZero(8, 4)
    x, cond = torch.randn(2, 3, 8), torch.randn(2, 4)
    m1, m2 = adaln(cond)
    y, h = adaln.normalize(x, m2, gate=m1.gate, residual=x, prenorm=True)
    (y.square().sum() + h.sum()).backward()
    assert adaln.linear.weight.grad.abs().sum() > 0


def test_adalnzero_matches_diffusers_adalayernormzero():
    """Chunk order and arithmetic, against diffusers' own class (shift_msa, scale_msa, gate_msa, shift_mlp, …)."""
    normalization = pytest.importorskip("diffusers.models.normalization")
    torch.manual_seed(0)
    theirs = normalization.AdaLayerNormZero(24)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours = tokennorm.AdaLNZero(24, 24)  # same chunk layout: Linear(24 → 6·24)
    ours.linear.load_state_dict(theirs.linear.state_dict())
    x, emb = torch.randn(3, 7, 24), torch.randn(3, 24)
    y_theirs, gate_msa, shift_mlp, scale_mlp, gate_mlp = theirs(x, emb=emb)
    m_attn, m_ff = ours(emb)
    torch.testing.assert_close(ours.normalize(x, m_attn), y_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        (m_attn.gate, m_ff.shift, m_ff.scale, m_ff.gate), (gate_msa, shift_mlp, scale_mlp, gate_mlp), rtol=0, atol=0
    )
