"""tokennorm.layer_norm / rms_norm and tokennorm.LayerNorm / RMSNorm against torch: outputs and the gradients
of input, weight and bias, on the torch backend and on the Triton kernels (the interpreter on a CPU machine).

The rule (flash-attention's): against a float64 reference computed from the same (rounded) inputs, our error
is at most twice torch's own error at the same precision, plus a small slack from the table below. Where the
answer is exact or undefined (empty tensors, NaN/inf rows) we compare with torch directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS

import tokennorm
from tokennorm import reference as R

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPES = [F64, F32, BF16, F16]

# Slack beyond 2× torch's error, as a fraction of max(1, max|reference|): (forward, backward).
# Forward: about one ulp of the output's dtype (bf16 2^-7 ≈ 8e-3, fp16 2^-10 ≈ 1e-3): one rounding of the
# output, which Triton's interpreter does by truncation for bf16 (a full ulp, not half; GPUs round to
# nearest). For fp32/fp64, a few dozen ulps: the row sums run in another order than torch's.
# Backward: twice the forward: dx needs two row reductions and dγ/dβ a sum over rows, each rounded once more.
# Measured on this suite: only bf16 ever needs the slack (forward up to 0.85 of it, backward 0.13).
TOL = {
    F64: (1e-12, 1e-10),
    F32: (2e-6, 2e-5),
    BF16: (8e-3, 1.6e-2),
    F16: (1e-3, 2e-3),
}

# torch's rms_norm warns that a float32 weight on a bf16/fp16 input takes its unfused path: expected here.
MIXED_DTYPE_WARNING = "ignore:Mismatch dtype between input and weight:UserWarning"


@pytest.fixture(params=BACKENDS)
def device(request):
    """Runs the test on each backend; returns the device its tensors go on."""
    return request.getfixturevalue(request.param) or "cpu"


@dataclass(frozen=True)
class Op:
    name: str
    ours: Callable
    torch: Callable
    has_bias: bool

    def __call__(self, fn, x, ns, weight, bias, eps):
        if self.has_bias:
            return fn(x, ns, weight, bias, eps)
        return fn(x, ns, weight, eps)

    def reference(self, x, ns, weight, bias, eps, dy):
        """(y, NormGrads) in float64; eps=None resolved for x's dtype, as torch resolves it."""
        up = [None if t is None else t.to(F64) for t in (x, weight, bias, dy)]
        if self.has_bias:
            x64, w64, b64, dy64 = up
            return R.layer_norm(x64, ns, w64, b64, eps), R.layer_norm_backward(dy64, x64, ns, w64, b64, eps)
        eps = R.default_rms_eps(x.dtype) if eps is None else eps
        return R.rms_norm(up[0], ns, up[1], eps), R.rms_norm_backward(up[3], up[0], ns, up[1], eps)


LN = Op("layer_norm", tokennorm.layer_norm, F.layer_norm, True)
RMS = Op("rms_norm", tokennorm.rms_norm, F.rms_norm, False)
OPS = [LN, RMS]


def _randn(shape, dtype, seed, device="cpu", scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(device=device, dtype=dtype)


def make_params(ns, dtype, affine, with_bias, device="cpu", seed=100):
    """γ around 1 and β around 0, like trained parameters; None where absent."""
    weight = _randn(ns, dtype, seed, device, scale=0.5, shift=1.0) if affine else None
    bias = _randn(ns, dtype, seed + 1, device, scale=0.5) if affine and with_bias else None
    return weight, bias


def run(fn, op: Op, base, ns, weight, bias, eps, dy, view=lambda t: t):
    """y and the gradients (w.r.t. base, weight, bias) of sum(fn(view(base)) · dy); all inputs are cloned."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (base, weight, bias)]
    y = op(fn, view(leaves[0]), ns, leaves[1], leaves[2], eps)
    y.backward(dy)
    return [y.detach()] + [None if t is None else t.grad for t in leaves]


def assert_matches_torch(
    op: Op, base, ns, weight=None, bias=None, eps=1e-5, view=lambda t: t, seed=7, torch_on_cpu=False
):
    """Forward and all gradients of tokennorm vs torch, by the 2×-torch's-error rule against float64."""
    x = view(base)
    dy = _randn(x.shape, x.dtype, seed, x.device)
    ours = run(op.ours, op, base, ns, weight, bias, eps, dy, view)
    if torch_on_cpu:
        cpu = [None if t is None else t.cpu() for t in (base, weight, bias, dy)]
        theirs = run(op.torch, op, cpu[0], ns, cpu[1], cpu[2], eps, cpu[3], view)
        theirs = [None if t is None else t.to(x.device) for t in theirs]
    else:
        theirs = run(op.torch, op, base, ns, weight, bias, eps, dy, view)
    y_ref, g_ref = op.reference(x.detach(), ns, weight, bias, eps, dy)
    # Gradients w.r.t. base: push the reference's dx back through the view (a sum over broadcast dims).
    base64 = base.detach().to(F64).requires_grad_()
    (dbase_ref,) = torch.autograd.grad(view(base64), base64, g_ref.dx)
    refs = [y_ref, dbase_ref, g_ref.dweight, g_ref.dbias if op.has_bias else None]
    # A broadcast view's gradient is a sum of dx values rounded to x's dtype: its rounding error scales with
    # the summands (|dx|), not with the sum, which can cancel to ~0 (constant rows: Σ_j dx_j = 0 exactly).
    scales = [None, g_ref.dx.abs().max().item() if g_ref.dx.numel() else 0.0, None, None]
    for i, name in enumerate(("y", "dx", "dweight", "dbias")):
        if refs[i] is None:
            assert ours[i] is None and theirs[i] is None, name
            continue
        slack = TOL[x.dtype][0 if i == 0 else 1]
        _assert_within_rule(f"{op.name} {name}", ours[i], theirs[i], refs[i], slack, scales[i])


def _assert_within_rule(what, ours, theirs, ref, slack, scale=None):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, f"{what}: {ours.dtype}{tuple(ours.shape)}"
    if ours.numel() == 0:
        return
    err_ours = (ours.to(F64) - ref).abs().max().item()
    err_torch = (theirs.to(F64) - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item(), scale or 0.0)
    bound = 2 * err_torch + slack * scale
    assert err_ours <= bound, f"{what}: error {err_ours:.3g} vs float64 > bound {bound:.3g} (torch: {err_torch:.3g})"


# (input shape, normalized_shape). M (the product of the leading dims) includes 1 and primes; N includes 1
# and non-powers of two; multi-dim normalized_shape.
SHAPES = [
    ((1, 7), (7,)),
    ((3, 1), (1,)),
    ((13, 37), (37,)),
    ((2, 5, 100), (100,)),
    ((7, 1023), (1023,)),
    ((3, 3000), (3000,)),
    ((4, 3, 5), (3, 5)),
    ((2, 3, 4, 5), (3, 4, 5)),
]
# The Triton interpreter is slow: a few small shapes still cover M = 1 / prime, N = 1 / prime / multi-dim.
TINY_SHAPES = [((1, 7), (7,)), ((13, 37), (37,)), ((3, 1), (1,)), ((2, 3, 4, 5), (4, 5))]
AFFINE = [(True, True), (True, False), (False, False)]  # (elementwise_affine, bias); RMSNorm ignores bias


def _affine_cases(op):
    return AFFINE if op.has_bias else AFFINE[1:]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,ns", SHAPES)
def test_functional_matches_torch(torch_backend, op, dtype, shape, ns):
    for affine, with_bias in _affine_cases(op):
        weight, bias = make_params(ns, dtype, affine, with_bias)
        assert_matches_torch(
            op, _randn(shape, dtype, 1, scale=2.0, shift=0.5), ns, weight, bias, eps=1e-5 if op.has_bias else None
        )


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.interpret
def test_triton_matches_torch(triton_backend, op, dtype):
    for (shape, ns), (affine, with_bias) in zip(TINY_SHAPES, _affine_cases(op) * 2):
        weight, bias = make_params(ns, dtype, affine, with_bias, triton_backend)
        assert_matches_torch(
            op,
            _randn(shape, dtype, 2, triton_backend, scale=2.0, shift=0.5),
            ns,
            weight,
            bias,
            eps=1e-5 if op.has_bias else None,
        )


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("shape", [(2, 1), (2, 3)], ids=str)
@pytest.mark.interpret
def test_triton_path_normalizing_a_whole_2d_input(triton_backend, op, shape):
    """A 2-D input normalized over both its dims is one row; the output keeps the input's shape (the fuzz
    test found [2, 1] coming back as [1, 2] from a shortcut that assumed 2-D meant one normalized dim)."""
    weight, bias = make_params(shape, F64, True, op.has_bias, triton_backend)
    assert_matches_torch(
        op, _randn(shape, F64, 5, triton_backend), shape, weight, bias, eps=1e-5 if op.has_bias else None
    )


@pytest.mark.filterwarnings(MIXED_DTYPE_WARNING)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_low_precision_input_with_float32_params(device, op, dtype):
    """What autocast hands a norm: a bf16/fp16 activation and float32 γ, β. Output in the input's dtype."""
    weight, bias = make_params((37,), F32, True, True, device)
    # torch's CUDA layer_norm refuses this mix ("expected scalar type BFloat16 but found Float"; torch 2.11)
    # while its CPU one takes it: tokennorm takes it everywhere, and is held to torch's CPU result.
    assert_matches_torch(op, _randn((5, 37), dtype, 3, device), (37,), weight, bias, torch_on_cpu=True)


@pytest.mark.filterwarnings(MIXED_DTYPE_WARNING)
@pytest.mark.parametrize("x_dtype,w_dtype", [(F32, BF16), (F64, F32), (BF16, F16)], ids=str)
def test_rms_norm_takes_any_float_weight_dtype(device, x_dtype, w_dtype):
    """torch's rms_norm accepts a weight of any floating dtype (unlike layer_norm); so do we."""
    weight, _ = make_params((7,), w_dtype, True, False, device)
    base = _randn((3, 7), x_dtype, 4, device)
    dy = _randn((3, 7), x_dtype, 5, device)
    ours = run(RMS.ours, RMS, base, (7,), weight, None, 1e-6, dy)
    theirs = run(RMS.torch, RMS, base, (7,), weight, None, 1e-6, dy)
    for a, b in zip(ours[:3], theirs[:3]):
        assert a.dtype == b.dtype
        # Torch rounds x̂ to the input dtype before scaling by γ; we scale in float32: one rounding of the
        # lower of the two precisions apart.
        low = min((x_dtype, w_dtype), key=lambda d: torch.finfo(d).bits)
        torch.testing.assert_close(a.to(F64), b.to(F64), rtol=2 * torch.finfo(low).eps, atol=1e-5)


# --- strides ------------------------------------------------------------------------------------------------
VIEWS = {
    "transposed": ((6, 5), (6,), lambda t: t.t()),
    "sliced": ((5, 14), (7,), lambda t: t[:, ::2]),
    "row-sliced 3d": ((4, 3, 9), (3, 5), lambda t: t[1:, :, 2:7]),
    "broadcast rows": ((1, 37), (37,), lambda t: t.expand(5, 37)),  # every row the same, stride 0
    # Constant rows: var = 0, so y is exactly β (torch's is); a mean off by one ulp would be magnified by
    # rstd = 1/sqrt(ε) ≈ 316.
    "broadcast columns": ((5, 1), (37,), lambda t: t.expand(5, 37)),
}


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("view", VIEWS, ids=str)
def test_non_contiguous_and_broadcast_inputs(device, op, view):
    base_shape, ns, fn = VIEWS[view]
    for dtype in (F32, BF16):
        weight, bias = make_params(ns, dtype, True, True, device)
        assert_matches_torch(op, _randn(base_shape, dtype, 6, device), ns, weight, bias, view=fn)


# --- empty tensors, NaN / inf, negative ε: compared with torch directly -------------------------------------
def _assert_same_as_torch(op, x, ns, weight, bias, eps, dtype_tol):
    dy = torch.ones_like(x)
    ours = run(op.ours, op, x, ns, weight, bias, eps, dy)
    theirs = run(op.torch, op, x, ns, weight, bias, eps, dy)
    for name, a, b in zip(("y", "dx", "dweight", "dbias"), ours, theirs):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a.isnan(), b.isnan()), f"{op.name} {name}: NaN in other places than torch's"
            torch.testing.assert_close(a, b, equal_nan=True, **dtype_tol, msg=lambda m, n=name: f"{op.name} {n}: {m}")
    return ours


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("shape,ns", [((0, 5), (5,)), ((2, 0, 3), (3,)), ((3, 0), (0,)), ((3, 2, 0), (2, 0))])
def test_empty_tensors(device, op, shape, ns):
    weight, bias = make_params(ns, F32, True, True, device)
    y, dx, dw, db = _assert_same_as_torch(
        op, torch.randn(shape, device=device), ns, weight, bias, 1e-5, dict(rtol=0, atol=0)
    )
    assert y.shape == shape and dw.shape == ns and torch.equal(dw, torch.zeros_like(dw))


INF, NAN = float("inf"), float("nan")
# One clean row between rows holding NaN, +inf and −inf; a constant row (var = 0) last.
SPECIAL_ROWS = [
    [1.0, 2.0, INF, 3.0],
    [0.5, -1.0, 2.0, 4.0],
    [NAN, 1.0, 2.0, 3.0],
    [1.0, -INF, 2.0, 3.0],
    [5.0, 5.0, 5.0, 5.0],
]


NAN_WARNINGS = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy


@NAN_WARNINGS
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_nan_and_inf_stay_in_their_row(device, op):
    """Only the affected rows go NaN, exactly where torch's do (RMSNorm: an inf row is 0 except NaN at the
    inf); γ and β gradients, summed over rows, are NaN in torch too."""
    x = torch.tensor(SPECIAL_ROWS, device=device)
    weight, bias = make_params((4,), F32, True, True, device)
    y, dx, _, _ = _assert_same_as_torch(op, x, (4,), weight, bias, 1e-5, dict(rtol=1e-5, atol=1e-4))
    clean = [1, 4]
    assert y[clean].isfinite().all() and dx[clean].isfinite().all()
    assert y[[0, 2, 3]].isnan().any(dim=1).all()


@NAN_WARNINGS
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_negative_eps_like_torch(device, op):
    """torch does not reject ε < 0: rows whose variance (mean square) exceeds |ε| are finite, others NaN."""
    x = torch.tensor(SPECIAL_ROWS[1:2] + SPECIAL_ROWS[4:] + [[0.0, 0.0, 0.0, 0.0]], device=device)
    weight, bias = make_params((4,), F32, True, True, device)
    # rstd = 1/sqrt(var − 1e-3) magnifies differences in var by up to ~1/(var − 1e-3) (4x here).
    y, _, _, _ = _assert_same_as_torch(op, x, (4,), weight, bias, -1e-3, dict(rtol=1e-5, atol=1e-4))
    assert y[0].isfinite().all() and y[2].isnan().all()


# --- modules -----------------------------------------------------------------------------------------------
def _module_pair(op, ns, affine, with_bias, dtype, device):
    kw = dict(elementwise_affine=affine, device=device, dtype=dtype)
    if op.has_bias:
        ours, theirs = tokennorm.LayerNorm(ns, bias=with_bias, **kw), torch.nn.LayerNorm(ns, bias=with_bias, **kw)
    else:
        ours, theirs = tokennorm.RMSNorm(ns, **kw), torch.nn.RMSNorm(ns, **kw)
    theirs.load_state_dict(ours.state_dict())
    weight, bias = make_params(ns, dtype, affine, with_bias, device)
    with torch.no_grad():
        for m in (ours, theirs):
            if affine:
                m.weight.copy_(weight)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(bias)
    return ours, theirs


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_module_matches_torch_module(device, op, dtype):
    for affine, with_bias in _affine_cases(op):
        ours, theirs = _module_pair(op, (4, 5), affine, with_bias, dtype, device)
        x = _randn((3, 4, 5), dtype, 8, device)
        dy = _randn((3, 4, 5), dtype, 9, device)
        outs = []
        for m in (ours, theirs):
            xx = x.clone().requires_grad_()
            y = m(xx)
            y.backward(dy)
            outs.append([y.detach(), xx.grad] + [p.grad for p in m.parameters()])
        assert len(outs[0]) == len(outs[1])
        weight = ours.weight.detach() if affine else None
        bias = getattr(ours, "bias", None)
        y_ref, g = (LN if op.has_bias else RMS).reference(
            x, (4, 5), weight, None if bias is None else bias.detach(), ours.eps, dy
        )
        refs = [y_ref, g.dx] + [r for r in (g.dweight, g.dbias) if r is not None]
        for i, (a, b, r) in enumerate(zip(outs[0], outs[1], refs)):
            _assert_within_rule(f"{op.name} module output {i}", a, b, r, TOL[dtype][0 if i == 0 else 1])


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_functional_equals_module(device, op):
    """The module is the functional op with its own parameters: bitwise the same outputs and gradients."""
    module, _ = _module_pair(op, (37,), True, True, F32, device)
    x = _randn((5, 37), F32, 10, device)
    dy = _randn((5, 37), F32, 11, device)
    xx = x.clone().requires_grad_()
    y_module = module(xx)
    y_module.backward(dy)
    bias = getattr(module, "bias", None)
    y, dx, dw, db = run(op.ours, op, x, (37,), module.weight, bias, module.eps, dy)
    assert torch.equal(y_module.detach(), y) and torch.equal(xx.grad, dx)
    assert torch.equal(module.weight.grad, dw)
    assert (db is None and bias is None) or torch.equal(module.bias.grad, db)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_inference_equals_training_forward(device, op, dtype):
    """Without autograd the Triton path skips the custom op (and saving statistics): same bits out."""
    weight, bias = make_params((37,), dtype, True, True, device)
    x = _randn((5, 37), dtype, 13, device)
    y_train = op(op.ours, x.clone().requires_grad_(), (37,), weight, bias, 1e-5)
    with torch.no_grad():
        y_infer = op(op.ours, x, (37,), weight.requires_grad_(), bias, 1e-5)
    assert torch.equal(y_train.detach(), y_infer)
    assert y_train.requires_grad and not y_infer.requires_grad


def test_tolerance_rule_can_fail():
    """The rule rejects an answer 4 bf16 ulps off everywhere: it is not vacuous at the loosest tolerance."""
    x = _randn((4, 37), BF16, 12)
    ref = R.layer_norm(x.to(F64), (37,))
    theirs = F.layer_norm(x, (37,))
    wrong = (theirs.to(F64) * (1 + 4 * torch.finfo(BF16).eps)).to(BF16)
    with pytest.raises(AssertionError):
        _assert_within_rule("deliberately wrong", wrong, theirs, ref, TOL[BF16][0])
