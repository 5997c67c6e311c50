"""Bad input raises what torch raises, with a message naming the argument; backends are chosen strictly;
what torch accepts we accept; inputs are never modified."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS

import tokennorm

X = torch.randn(3, 4)
W4 = torch.ones(4)

# (name, op, args after the input, input, words the message must contain). Each case is also run through
# torch itself, and we must raise exactly the exception type torch raises on the same call.
CASES = [
    ("trailing dims differ", "layer_norm", ((5,),), X, ["normalized_shape", "[5]", "[3, 4]"]),
    ("trailing dims differ", "rms_norm", ((5,),), X, ["normalized_shape", "[5]", "[3, 4]"]),
    ("more dims than input", "layer_norm", ((2, 3, 4),), X, ["normalized_shape", "[2, 3, 4]", "[3, 4]"]),
    ("multi-dim mismatch", "rms_norm", ((2, 4),), torch.randn(2, 3, 4), ["normalized_shape", "[2, 4]"]),
    ("empty normalized_shape", "layer_norm", ((),), X, ["normalized_shape", "[]"]),
    ("empty normalized_shape", "rms_norm", ((),), X, ["normalized_shape", "[]"]),
    ("weight shape", "layer_norm", ((4,), torch.ones(5)), X, ["weight", "[5]", "[4]"]),
    ("weight shape", "rms_norm", ((4,), torch.ones(5)), X, ["weight", "[5]", "[4]"]),
    ("weight rank", "layer_norm", ((4,), torch.ones(1, 4)), X, ["weight", "[1, 4]", "[4]"]),
    ("bias shape", "layer_norm", ((4,), W4, torch.ones(3)), X, ["bias", "[3]", "[4]"]),
    ("weight device", "layer_norm", ((4,), torch.ones(4, device="meta")), X, ["weight", "meta"]),
    ("weight device", "rms_norm", ((4,), torch.ones(4, device="meta")), X, ["weight", "meta"]),
    ("bias device", "layer_norm", ((4,), W4, torch.ones(4, device="meta")), X, ["bias", "meta"]),
    ("integer input", "layer_norm", ((4,),), torch.ones(3, 4, dtype=torch.int64), ["Long"]),
    ("integer input", "rms_norm", ((4,),), torch.ones(3, 4, dtype=torch.int32), ["Int"]),
    ("bool input", "layer_norm", ((4,),), torch.ones(3, 4, dtype=torch.bool), ["Bool"]),
    ("int normalized_shape", "layer_norm", (4,), X, ["normalized_shape", "int"]),
    ("int normalized_shape", "rms_norm", (4,), X, ["normalized_shape", "int"]),
    ("float in normalized_shape", "layer_norm", ((4.0,),), X, ["normalized_shape", "float"]),
    ("weight dtype (layer_norm only)", "layer_norm", ((4,), torch.ones(4, dtype=torch.float64)), X, []),
]


def _torch_error(op, x, args):
    with pytest.raises(Exception) as info:
        getattr(F, op)(x, *args)
    return info.type


@pytest.fixture(params=BACKENDS)
def backend(request):
    request.getfixturevalue(request.param)


@pytest.mark.parametrize("what,op,args,x,words", CASES, ids=[f"{c[1]}: {c[0]}" for c in CASES])
def test_bad_input_raises_like_torch(backend, what, op, args, x, words):
    expected = _torch_error(op, x, args)
    with pytest.raises(Exception) as info:
        getattr(tokennorm, op)(x, *args)
    assert info.type is expected, f"{what}: raised {info.type.__name__}, torch raises {expected.__name__}"
    for word in words:
        assert word in str(info.value), f"{what}: {word!r} not in {str(info.value)!r}"


def test_module_raises_like_torch(backend):
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        torch.nn.LayerNorm(4)(x)
    with pytest.raises(RuntimeError, match=r"normalized_shape.*\[4\].*\[3, 5\]"):
        tokennorm.LayerNorm(4)(x)
    with pytest.raises(RuntimeError, match=r"normalized_shape.*\[4\]"):
        tokennorm.RMSNorm(4)(x)


@pytest.mark.parametrize(
    "normalized_shape",
    [[4], torch.Size([4]), (np.int64(4),), (torch.tensor(4),)],
    ids=["list", "Size", "numpy int", "0-dim tensor"],
)
def test_accepts_what_torch_accepts(backend, normalized_shape):
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(tokennorm.layer_norm(x, normalized_shape), F.layer_norm(x, normalized_shape))
    torch.testing.assert_close(tokennorm.rms_norm(x, normalized_shape), F.rms_norm(x, normalized_shape))


def test_unknown_backend_is_a_value_error(backend_from_environment):
    backend_from_environment("bogus")
    for call in (lambda: tokennorm.layer_norm(X, (4,)), lambda: tokennorm.RMSNorm(4)(X), tokennorm.get_backend):
        with pytest.raises(ValueError, match="TOKENNORM_BACKEND='bogus'") as info:
            call()
        assert all(name in str(info.value) for name in ("auto", "torch", "triton"))
    for switch in (tokennorm.set_backend, tokennorm.using_backend):
        with pytest.raises(ValueError, match="'cuda' is not a tokennorm backend"):
            switch("cuda")
        with pytest.raises(TypeError, match="str"):
            switch(None)


def test_triton_on_cpu_without_interpreter_refuses(monkeypatch):
    """No silent fallback to torch: asking for Triton where it cannot run is an error."""
    monkeypatch.setattr(tokennorm.backend, "_kernels_run_on_cpu", False)  # as when imported without the interpreter
    with tokennorm.using_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            tokennorm.layer_norm(X, (4,))
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            tokennorm.rms_norm(X, (4,))


# --- inputs are never modified ------------------------------------------------------------------------------
def _snapshot(*tensors):
    return [(t.detach().clone(), t.stride()) for t in tensors]


def _assert_unchanged(before, after):
    """Bitwise: the same float32 bit patterns (so -0.0 vs 0.0 or a NaN payload would count), same strides."""
    for i, ((b, stride), a) in enumerate(zip(before, after)):
        assert a.stride() == stride, f"input {i}: strides changed"
        assert torch.equal(a.detach().contiguous().view(torch.int32), b.contiguous().view(torch.int32)), (
            f"input {i} was modified"
        )


def _leaf(t):
    return t.detach().clone().requires_grad_()


@pytest.mark.parametrize("transposed", [False, True])
def test_norms_leave_inputs_unchanged(backend, transposed):
    base = torch.randn(6, 5)
    x = _leaf(base.t() if transposed else base)
    ns = x.shape[-1:]
    weight, bias = _leaf(torch.randn(ns)), _leaf(torch.randn(ns))
    dy = torch.randn(x.shape)
    before = _snapshot(x, weight, bias, dy)
    tokennorm.layer_norm(x, ns, weight, bias).backward(dy)
    tokennorm.rms_norm(x, ns, weight).backward(dy)
    tokennorm.LayerNorm(ns)(x).backward(dy)
    _assert_unchanged(before, [x, weight, bias, dy])


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("prenorm,dropout_p", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_add_norm_leaves_inputs_unchanged(backend, norm, prenorm, dropout_p):
    x, residual = _leaf(torch.randn(4, 8)), _leaf(torch.randn(4, 8))
    weight, bias = _leaf(torch.randn(8)), _leaf(torch.randn(8))
    before = _snapshot(x, residual, weight, bias)
    out = tokennorm.add_norm(x, residual, weight, bias, norm=norm, prenorm=prenorm, dropout_p=dropout_p)
    y, h = out if prenorm else (out, None)
    loss = y.sum() if h is None else y.sum() + (h * h).sum()
    loss.backward()
    _assert_unchanged(before, [x, residual, weight, bias])
