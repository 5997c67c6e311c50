"""tokennorm.dyt / add_dyt / DyT / AddDyT: against the float64 reference (values, dx, dα, dγ, dβ, dresidual) in each
dtype, against the paper's DynamicTanh and Liger's parameters, errors, and edge inputs."""

import pytest
import torch

import tokennorm
from tokennorm import reference as R

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
U = {F64: 2.0**-40, F32: 2.0**-24, BF16: 2.0**-8, F16: 2.0**-11}  # float64: the reference's own sum order


def _randn(shape, dtype, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dtype)


def _within(name, got, ref, dtype, k, magnitude):
    err = (got.double() - ref.double()).abs().max().item()
    assert err <= k * U[dtype] * magnitude, f"{name}: {err:.3g} > {k} u × {magnitude:.3g}"


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
@pytest.mark.parametrize("add,prenorm", [(False, False), (True, False), (True, True)])
def test_matches_the_float64_reference_with_gradients(dtype, add, prenorm):
    shape, c = (3, 5, 24), 24
    p_dtype = F32 if dtype in (BF16, F16) else dtype
    t = dict(
        x=_randn(shape, dtype, 0, 2.0),
        alpha=torch.tensor([0.6], dtype=p_dtype),
        weight=_randn((c,), p_dtype, 1, 0.1, 1.0),
        bias=_randn((c,), p_dtype, 2, 0.1),
    )
    if add:
        t["residual"] = _randn(shape, p_dtype, 3)
    dy, dh = _randn(shape, dtype, 4), _randn(shape, dtype, 5)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    if add:
        out = tokennorm.add_dyt(
            leaves["x"], leaves["residual"], leaves["alpha"], leaves["weight"], leaves["bias"], prenorm=prenorm
        )
    else:
        out = tokennorm.dyt(leaves["x"], leaves["alpha"], leaves["weight"], leaves["bias"])
    outs = out if prenorm else (out,)
    torch.autograd.backward(list(outs), [dy, dh.to(p_dtype)][: len(outs)])
    t64 = {k: v.double() for k, v in t.items()}
    if add:
        y_ref, h_ref = R.add_dyt(t64["x"], t64["residual"], t64["alpha"], t64["weight"], t64["bias"])
        g = R.add_dyt_backward(
            dy.double(),
            dh.double() if prenorm else None,
            t64["x"],
            t64["residual"],
            t64["alpha"],
            t64["weight"],
            t64["bias"],
        )
    else:
        y_ref = R.dyt(t64["x"], t64["alpha"], t64["weight"], t64["bias"])
        g = R.dyt_backward(dy.double(), t64["x"], t64["alpha"], t64["weight"], t64["bias"])
    assert outs[0].dtype == dtype
    _within("y", outs[0], y_ref, dtype, 2, 1.2 + t64["bias"].abs().max().item())
    if prenorm:
        assert outs[1].dtype == p_dtype
        _within("h", outs[1], h_ref, p_dtype, 1, h_ref.abs().max().item())
    dy_max, n_rows = dy.double().abs().max().item(), 15
    w_max, a = t64["weight"].abs().max().item(), 0.6
    x_max = (t64["x"] + t64.get("residual", 0)).abs().max().item()
    magnitudes = {  # the largest term of each gradient
        "dx": a * dy_max * w_max + (dh.double().abs().max().item() if prenorm else 0.0),
        "dalpha": dy_max * w_max * x_max * dy.numel(),
        "dweight": dy_max * n_rows,
        "dbias": dy_max * n_rows,
    }
    magnitudes["dresidual"] = magnitudes["dx"]
    for name, leaf in leaves.items():
        ref = getattr(g, "d" + name)
        assert leaf.grad.dtype == leaf.dtype
        _within("d" + name, leaf.grad, ref, leaf.dtype, 4, magnitudes["d" + name])


def test_the_public_function_is_not_shadowed_by_a_submodule():
    import tokennorm.dynamic_tanh  # noqa: F401  (importing a submodule sets a package attribute)

    assert callable(tokennorm.dyt) and callable(tokennorm.add_dyt) and callable(tokennorm.ada_norm)
    assert callable(tokennorm.channels_first_layer_norm)


def test_dyt_module_is_the_papers_dynamic_tanh():
    """Parameters and state_dict keys of the paper's DynamicTanh (alpha [1], weight, bias); Liger's LigerDyT names
    them alpha, gamma, beta — the same tensors."""
    m = tokennorm.DyT(16, alpha_init=0.8)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"alpha": (1,), "weight": (16,), "bias": (16,)}
    assert m.alpha.item() == pytest.approx(0.8) and m.weight.eq(1).all() and m.bias.eq(0).all()
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(m(x), torch.tanh(0.8 * x))
    assert tokennorm.DyT(16, bias=False).bias is None
    no_affine = tokennorm.DyT(16, elementwise_affine=False)
    assert no_affine.weight is None and no_affine.bias is None and len(list(no_affine.parameters())) == 1


def test_add_dyt_module_placements_and_dropout():
    torch.manual_seed(0)
    x, r = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    post = tokennorm.AddDyT(8)
    torch.testing.assert_close(post(x, r), tokennorm.dyt(r + x, post.alpha, post.weight, post.bias))
    y, h = tokennorm.AddDyT(8, "pre")(x, r)
    torch.testing.assert_close(h, r + x)
    drop = tokennorm.AddDyT(8, dropout=0.5).eval()
    torch.testing.assert_close(drop(x, r), post(x, r))  # eval: no dropout
    drop.train()
    torch.manual_seed(1)
    got = drop(x, r)
    torch.manual_seed(1)
    want = tokennorm.dyt(r + torch.nn.functional.dropout(x, 0.5), drop.alpha, drop.weight, drop.bias)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="placement"):
        tokennorm.AddDyT(8, "middle")


def test_liger_dyt_agrees_when_installed():
    liger = pytest.importorskip("liger_kernel.transformers.dyt")
    theirs = liger.LigerDyT(12, init_alpha=0.7)
    ours = tokennorm.DyT(12, alpha_init=0.7)
    with torch.no_grad():
        theirs.gamma.normal_()
        theirs.beta.normal_()
        ours.weight.copy_(theirs.gamma)
        ours.bias.copy_(theirs.beta)
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), theirs.gamma * torch.tanh(theirs.alpha * x) + theirs.beta)


def test_edges_as_the_composition():
    alpha = torch.tensor([0.5])
    assert tokennorm.dyt(torch.randn(0, 8), alpha, torch.ones(8)).shape == (0, 8)
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0]])
    torch.testing.assert_close(tokennorm.dyt(x, alpha), torch.tanh(0.5 * x), equal_nan=True)
    base = torch.randn(6, 4, 8)
    nc = base.transpose(0, 1)
    torch.testing.assert_close(
        tokennorm.dyt(nc, alpha, torch.ones(8)), tokennorm.dyt(nc.contiguous(), alpha, torch.ones(8)), rtol=0, atol=0
    )
    assert tokennorm.dyt(x, 0.5).shape == x.shape  # a Python α
    r = torch.randn(1, 4)
    _, h = tokennorm.add_dyt(r, None, alpha, prenorm=True)
    assert torch.equal(h, r) and h.data_ptr() != r.data_ptr()
    before = r.clone()
    tokennorm.add_dyt(torch.randn(1, 4), r, alpha)
    assert torch.equal(r, before)


BAD = [
    (dict(alpha=torch.ones(2)), RuntimeError, "Expected alpha to be a scalar"),
    (dict(alpha=torch.ones(1, dtype=torch.long)), TypeError, "alpha must be a floating-point tensor"),
    (dict(alpha="0.5"), TypeError, "alpha must be a float"),
    (dict(weight=torch.ones(7)), RuntimeError, r"expected input with shape \[\*, 7\]"),
    (dict(weight=torch.ones(8), bias=torch.ones(4)), RuntimeError, "weight and bias of the same shape"),
    (dict(weight=torch.ones(8, dtype=F64)), RuntimeError, "mixed dtype: expected weight"),
    (dict(x=torch.ones(2, 8, dtype=torch.int32)), NotImplementedError, "\"dyt\" not implemented for 'Int'"),
]


@pytest.mark.parametrize("change,error,match", BAD)
def test_bad_input_raises_torchs_error_type_naming_the_argument(change, error, match):
    args = dict(x=torch.randn(2, 8), alpha=torch.ones(1), weight=None, bias=None)
    args.update(change)
    with pytest.raises(error, match=match):
        tokennorm.dyt(args["x"], args["alpha"], args["weight"], args["bias"])
    with pytest.raises(RuntimeError, match="Expected residual to have the shape of x"):
        tokennorm.add_dyt(torch.randn(2, 8), torch.randn(2, 7), 0.5)
