"""Bad arguments raise what torch raises (type, and a message naming the argument) on the Triton path too;
what torch computes, tokennorm computes (issue 14, item 8: each case failed before the fix)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS

import tokennorm

X = torch.randn(3, 4)
W = torch.ones(4)

# (what, op, args, the argument the message must name)
CASES = [
    ("bias given as a float (eps in its place)", "layer_norm", (X, (4,), W, 1e-5), "bias"),
    ("weight as a list", "layer_norm", (X, (4,), [1.0] * 4), "weight"),
    ("weight as a list", "rms_norm", (X, (4,), [1.0] * 4), "weight"),
    ("eps as a string", "rms_norm", (X, (4,), None, "1e-5"), "eps"),
    ("eps as a string", "layer_norm", (X, (4,), None, None, "1e-5"), "eps"),
    ("eps None", "layer_norm", (X, (4,), None, None, None), "eps"),
    ("eps a 1-element tensor", "layer_norm", (X, (4,), None, None, torch.tensor([1e-5])), "eps"),
    ("more normalized dims than the input", "rms_norm", (X, (2, 3, 4)), "dimensions"),
    ("0-dim input", "rms_norm", (torch.tensor(1.0), (1,)), "dimensions"),
    ("input a list", "layer_norm", ([[1.0] * 4], (4,)), "input"),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    request.getfixturevalue(request.param)


@pytest.mark.parametrize("what,op,args,name", CASES, ids=[f"{c[1]}: {c[0]}" for c in CASES])
def test_raises_what_torch_raises(backend, what, op, args, name):
    with pytest.raises(Exception) as torch_error:
        getattr(F, op)(*args)
    with pytest.raises(Exception) as ours:
        getattr(tokennorm, op)(*args)
    assert ours.type is torch_error.type, f"{what}: {ours.type.__name__}, torch raises {torch_error.type.__name__}"
    assert name in str(ours.value), f"{what}: {name!r} not in {str(ours.value)!r}"
    if op == "rms_norm" or ours.type is TypeError:
        assert str(ours.value) == str(torch_error.value)


@pytest.mark.parametrize(
    "eps",
    [1, True, 1e-3, torch.tensor(1e-3), torch.tensor(1)],
    ids=["int", "bool", "float", "0-dim tensor", "0-dim int tensor"],
)
def test_takes_every_eps_torch_takes(backend, eps):
    torch.testing.assert_close(tokennorm.layer_norm(X, (4,), W, None, eps), F.layer_norm(X, (4,), W, None, eps))
    torch.testing.assert_close(tokennorm.rms_norm(X, (4,), W, eps), F.rms_norm(X, (4,), W, eps))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_rms_norm_computes_as_torch(backend, dtype):
    x = torch.randn(3, 4, dtype=dtype)
    torch.testing.assert_close(tokennorm.rms_norm(x, (4,)), F.rms_norm(x, (4,)), rtol=0, atol=0)
    torch.testing.assert_close(tokennorm.rms_norm(x, (4,), W), F.rms_norm(x, (4,), W), rtol=0, atol=0)


def test_add_norm_names_its_arguments():
    with pytest.raises(TypeError, match=r"add_norm\(\): argument 'bias' \(position 4\) must be Tensor, not float"):
        tokennorm.add_norm(X, None, W, 1e-5)
    with pytest.raises(TypeError, match=r"argument 'eps' \(position 5\) must be float, not str"):
        tokennorm.add_norm(X, None, W, None, "1e-5")
    with pytest.raises(TypeError, match=r"argument 'x' \(position 1\) must be Tensor, not list"):
        tokennorm.add_norm([1.0, 2.0])
