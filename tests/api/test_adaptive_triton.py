"""tokennorm.ada_norm on the Triton path: the public function's glue around the fused kernels — modulation forms
([B, C], per token, mixed), x of 2 to 4 dims, strided views, which inputs need gradients, prenorm's h, edges —
against the float64 reference (values and every gradient) and the torch path. The kernels themselves, in every
mode and dtype, are tested in tests/kernels/test_adaptive_kernels.py."""

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm import reference as R

pytestmark = pytest.mark.interpret

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
REL = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7}  # of each tensor's largest reference value (as the kernel tests)


def _randn(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype)


def _run(device, t, norm="layernorm", prenorm=True):
    leaves = {k: None if v is None else v.to(device).requires_grad_() for k, v in t.items()}
    out = tokennorm.ada_norm(
        leaves["x"],
        leaves["shift"],
        leaves["scale"],
        gate=leaves["gate"],
        residual=leaves["residual"],
        norm=norm,
        weight=leaves["weight"],
        bias=leaves["bias"],
        prenorm=prenorm,
    )
    outs = out if prenorm else (out,)
    weights = [_randn(o.shape, o.dtype, 50 + i).to(device) for i, o in enumerate(outs)]
    torch.autograd.backward(list(outs), weights)
    return outs, {"d" + k: v.grad for k, v in leaves.items() if v is not None}, [w.cpu() for w in weights]


def _check_against_reference(t, outs, grads, weights, norm="layernorm"):
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    y, h = R.ada_norm(**t64, norm=norm)
    g = R.ada_norm_backward(weights[0].double(), weights[1].double() if len(weights) > 1 else None, **t64, norm=norm)
    want = {"y": y, "h": h} | {name: getattr(g, name) for name in grads}
    got = {"y": outs[0], "h": outs[1] if len(outs) > 1 else None} | grads
    for name, value in got.items():
        if value is None:
            continue
        assert value.dtype == (t[name[1:]].dtype if name.startswith("d") else value.dtype), name
        ref = want[name]
        rel = REL[value.dtype]  # each output rounded once to its dtype (float32 sums: float32 roundoff)
        err = (value.detach().double().cpu() - ref).abs().max().item()
        assert err <= rel * max(1.0, ref.abs().max().item()), f"{name}: {err:.3g}"


def _case(shape, dtype=F32, mod_shapes=None, gate=True, residual=True, affine=False, seed=0):
    b, c = shape[0], shape[-1]
    shift_s, scale_s, gate_s = mod_shapes or ((b, c),) * 3
    p_dtype = F32 if dtype == BF16 else dtype
    return dict(
        x=_randn(shape, dtype, seed, 2.0),
        shift=_randn(shift_s, dtype, seed + 1),
        scale=_randn(scale_s, dtype, seed + 2, 0.5),
        gate=_randn(gate_s, dtype, seed + 3) if gate else None,
        residual=_randn(shape, p_dtype, seed + 4) if residual else None,
        weight=(1 + _randn((c,), p_dtype, seed + 5, 0.1)) if affine else None,
        bias=_randn((c,), p_dtype, seed + 6, 0.1) if affine else None,
    )


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("form", ["dit", "per-token-affine", "mixed", "2d", "4d-bf16"])
def test_matches_the_float64_reference_with_every_gradient(triton_backend, form, norm):
    shape = {"2d": (6, 16), "4d-bf16": (2, 2, 3, 16)}.get(form, (2, 5, 16))
    t = _case(
        shape,
        BF16 if form == "4d-bf16" else F32,
        mod_shapes={"per-token-affine": (shape,) * 3, "mixed": ((2, 16), shape, (2, 16))}.get(form),
        affine=form == "per-token-affine",
    )
    outs, grads, weights = _run(triton_backend, t, norm)
    assert outs[0].shape == shape and outs[1].dtype == (t["residual"].dtype)
    _check_against_reference(t, outs, grads, weights, norm)


@pytest.mark.parametrize(
    "gate,residual",
    [(False, False), (True, False), (False, True)],
    ids=["modulation-only", "gate-only", "residual-only"],
)
def test_optional_inputs_and_prenorm(triton_backend, gate, residual):
    t = _case((2, 4, 16), gate=gate, residual=residual, affine=True, seed=1)
    outs, grads, weights = _run(triton_backend, t)
    _check_against_reference(t, outs, grads, weights)
    dev = {k: None if v is None else v.to(triton_backend) for k, v in t.items()}
    y = tokennorm.ada_norm(dev.pop("x"), dev.pop("shift"), dev.pop("scale"), **dev)
    assert torch.equal(y, outs[0].detach())  # without prenorm: the same y


def test_strided_views_equal_contiguous_copies(triton_backend):
    """x and the residual as transposed views; shift/scale/gate as chunks of one [B, 3C] projection (DiT's
    layout, row stride 3C): the same bits as contiguous copies."""
    base = _randn((5, 2, 16), F32, 0).to(triton_backend)
    x, r = base.transpose(0, 1), _randn((5, 2, 16), F32, 1).to(triton_backend).transpose(0, 1)
    shift, scale, gate = _randn((2, 48), F32, 2).to(triton_backend).chunk(3, dim=-1)
    got = tokennorm.ada_norm(x, shift, scale, gate=gate, residual=r, prenorm=True)
    want = tokennorm.ada_norm(
        x.contiguous(),
        shift.contiguous(),
        scale.contiguous(),
        gate=gate.contiguous(),
        residual=r.contiguous(),
        prenorm=True,
    )
    for a, e in zip(got, want):
        assert torch.equal(a, e)


def test_gradients_only_where_asked(triton_backend):
    t = _case((2, 3, 16), seed=2)
    dev = {k: v.to(triton_backend) for k, v in t.items() if v is not None}
    scale = dev["scale"].clone().requires_grad_()
    y = tokennorm.ada_norm(dev["x"], dev["shift"], scale, gate=dev["gate"], residual=dev["residual"])
    (dscale,) = torch.autograd.grad(y.sum(), scale)
    g = R.ada_norm_backward(
        torch.ones(2, 3, 16, dtype=F64), None, **{k: v.double() for k, v in t.items() if v is not None}
    )
    torch.testing.assert_close(dscale.double().cpu(), g.dscale, rtol=1e-5, atol=1e-5)


def test_edges_as_the_composition(triton_backend):
    dev = triton_backend
    for shape in [(0, 4, 8), (2, 0, 8)]:  # empty: torch's composition
        assert (
            tokennorm.ada_norm(
                torch.randn(shape, device=dev),
                torch.randn(shape[0], 8, device=dev),
                torch.randn(shape[0], 8, device=dev),
            ).shape
            == shape
        )
    x = torch.randn(2, 3, 4, device=dev)
    x[0, 1, 2], x[1, 0, 0] = float("nan"), float("inf")
    y = tokennorm.ada_norm(x, torch.zeros(2, 4, device=dev), torch.zeros(2, 4, device=dev))
    torch.testing.assert_close(y, F.layer_norm(x, (4,)), equal_nan=True)
    assert y[0, 1].isnan().all() and y[0, 0].isfinite().all() and y[1, 1].isfinite().all()
    t = _case((2, 3, 8), seed=3)
    before = {k: v.clone() for k, v in t.items() if v is not None}
    _, h = tokennorm.ada_norm(**{k: v.to(dev) for k, v in t.items() if v is not None}, prenorm=True)
    for k, v in before.items():
        assert torch.equal(t[k], v), k
    x = t["x"].to(dev)
    _, h = tokennorm.ada_norm(x, t["shift"].to(dev), t["scale"].to(dev), prenorm=True)
    assert torch.equal(h, x) and h.data_ptr() != x.data_ptr()


def test_equals_the_torch_path_on_dits_block(triton_backend):
    """AdaLNZero.normalize (LayerNorm, ε = 1e-6, no affine) on both backends: float32 roundoff apart."""
    adaln = tokennorm.AdaLNZero(16, 8).to(triton_backend)
    with torch.no_grad():
        adaln.linear.weight.normal_()
    x, c = torch.randn(2, 5, 16, device=triton_backend), torch.randn(2, 8, device=triton_backend)
    m1, m2 = adaln(c)
    ours = adaln.normalize(x, m2, gate=m1.gate, residual=x, prenorm=True)
    with tokennorm.using_backend("torch"):
        theirs = adaln.normalize(x, m2, gate=m1.gate, residual=x, prenorm=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
