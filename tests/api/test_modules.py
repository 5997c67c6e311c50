"""tokennorm.LayerNorm / RMSNorm are torch's modules (class, repr, state_dict, parameters, init), and AddNorm
is Norm(residual + dropout(x)) with the placements of post-LN and pre-LN blocks."""

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS

import tokennorm

# (tokennorm class, torch class, constructor kwargs): every parameter layout either class can have.
CONFIGS = [
    (tokennorm.LayerNorm, torch.nn.LayerNorm, dict(normalized_shape=8)),
    (tokennorm.LayerNorm, torch.nn.LayerNorm, dict(normalized_shape=(2, 3), eps=1e-6, bias=False)),
    (tokennorm.LayerNorm, torch.nn.LayerNorm, dict(normalized_shape=[5], elementwise_affine=False)),
    (tokennorm.RMSNorm, torch.nn.RMSNorm, dict(normalized_shape=8)),
    (tokennorm.RMSNorm, torch.nn.RMSNorm, dict(normalized_shape=torch.Size([2, 3]), eps=1e-6)),
    (tokennorm.RMSNorm, torch.nn.RMSNorm, dict(normalized_shape=5, elementwise_affine=False)),
]
IDS = [f"{ours.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for ours, _, kw in CONFIGS]


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_isinstance_of_torch_modules():
    assert isinstance(tokennorm.LayerNorm(8), torch.nn.LayerNorm)
    assert isinstance(tokennorm.RMSNorm(8), torch.nn.RMSNorm)


@pytest.mark.parametrize("ours,theirs,kw", CONFIGS, ids=IDS)
def test_same_repr_attributes_and_parameters(ours, theirs, kw):
    a, b = ours(**kw), theirs(**kw)
    assert repr(a) == repr(b)
    assert a.normalized_shape == b.normalized_shape and type(a.normalized_shape) is tuple
    assert (a.eps, a.elementwise_affine) == (b.eps, b.elementwise_affine)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for name in ("weight", "bias"):
        assert hasattr(a, name) == hasattr(b, name)
        pa, pb = getattr(a, name, None), getattr(b, name, None)
        assert (pa is None) == (pb is None), name  # None, not a dummy, when the parameter does not exist
        if pa is not None:
            assert torch.equal(pa, pb) and pa.shape == b.normalized_shape


@pytest.mark.parametrize("ours,theirs,kw", CONFIGS, ids=IDS)
def test_state_dict_loads_both_ways(torch_backend, ours, theirs, kw):
    a, b = ours(**kw), theirs(**kw)
    x = torch.randn(4, *b.normalized_shape)
    _randomize(a, 1)
    b.load_state_dict(a.state_dict())  # tokennorm -> torch, strict
    assert torch.equal(a(x), b(x))
    _randomize(b, 2)
    a.load_state_dict(b.state_dict())  # torch -> tokennorm, strict
    assert torch.equal(a(x), b(x))
    assert list(a.state_dict()) == list(b.state_dict())


@pytest.mark.parametrize("ours,theirs,kw", CONFIGS, ids=IDS)
def test_reset_parameters(ours, theirs, kw):
    a, b = ours(**kw), theirs(**kw)
    _randomize(a, 3)
    a.reset_parameters()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # weight ones, bias zeros
    if a.elementwise_affine:
        assert torch.equal(a.weight, torch.ones_like(a.weight))


@pytest.mark.parametrize("ours,theirs,kw", CONFIGS, ids=IDS)
@pytest.mark.parametrize("device,dtype", [("cpu", torch.float64), ("meta", torch.bfloat16)])
def test_factory_kwargs(ours, theirs, kw, device, dtype):
    a, b = ours(**kw, device=device, dtype=dtype), theirs(**kw, device=device, dtype=dtype)
    assert len(list(a.parameters())) == len(list(b.parameters()))
    for p in a.parameters():
        assert p.device.type == device and p.dtype == dtype


# --- AddNorm ------------------------------------------------------------------------------------------------
SHAPE = (2, 5, 16)


def _inputs(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g).to(device) for _ in range(2))


def _unfused(norm, h, module):
    """The composition AddNorm fuses, through torch's own functional norms."""
    if norm == "rmsnorm":
        y = F.rms_norm(h, module.normalized_shape, module.weight, module.eps)
        return y if module.bias is None else y + module.bias
    return F.layer_norm(h, module.normalized_shape, module.weight, module.bias, module.eps)


@pytest.fixture(params=BACKENDS)
def device(request):
    return request.getfixturevalue(request.param) or "cpu"


# float32 on both sides: h is one rounded add; the norms differ by summation order only (a few ulps).
FP32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_add_norm_post_is_norm_of_the_sum(device, norm):
    module = tokennorm.AddNorm(SHAPE[-1], norm=norm, device=device)
    _randomize(module, 4)
    x, residual = _inputs(device)
    y = module(x, residual)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, _unfused(norm, residual + x, module), **FP32)
    if norm == "layernorm":
        reference = torch.nn.LayerNorm(SHAPE[-1], device=device)
        reference.load_state_dict(module.state_dict())  # same parameter names: state_dicts interchange
        torch.testing.assert_close(y, reference(residual + x), **FP32)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_add_norm_pre_returns_output_and_residual_stream(device, norm):
    module = tokennorm.AddNorm(SHAPE[-1], norm=norm, placement="pre", device=device)
    _randomize(module, 5)
    x, residual = _inputs(device, 1)
    y, h = module(x, residual)
    torch.testing.assert_close(h, residual + x, rtol=0, atol=0)
    torch.testing.assert_close(y, _unfused(norm, residual + x, module), **FP32)
    y0, h0 = module(x)  # no residual: h is x itself (a copy)
    assert torch.equal(h0, x) and h0.data_ptr() != x.data_ptr()
    torch.testing.assert_close(y0, _unfused(norm, x, module), **FP32)


def test_add_norm_eval_mode_and_zero_dropout_are_unfused(device):
    x, residual = _inputs(device, 2)
    dropping = tokennorm.AddNorm(SHAPE[-1], dropout=0.5, device=device).eval()
    plain = tokennorm.AddNorm(SHAPE[-1], dropout=0.0, device=device)  # training mode
    for module in (dropping, plain):
        torch.testing.assert_close(module(x, residual), _unfused("layernorm", residual + x, module), **FP32)


def test_add_norm_dropout_in_training_drops_and_rescales(device):
    p = 0.5
    module = tokennorm.AddNorm(SHAPE[-1], placement="pre", dropout=p, device=device)
    x, residual = _inputs(device, 3)
    y, h = module(x, residual)
    dropped = h - residual
    kept = (dropped - x / (1 - p)).abs() <= 1e-5 * (1 + x.abs())
    zeroed = dropped.abs() <= 1e-6
    assert (kept | zeroed).all()
    assert 0.3 < zeroed.float().mean().item() < 0.7  # 160 elements at p = 0.5: ±4σ
    torch.testing.assert_close(y, _unfused("layernorm", h, module), **FP32)


def test_add_norm_weight_offset_starts_as_the_identity_scale(device):
    module = tokennorm.AddNorm(SHAPE[-1], weight_offset=1.0, device=device)
    assert torch.equal(module.weight, torch.zeros_like(module.weight))  # γ + 1 = 1 at init, Gemma-style
    x, residual = _inputs(device, 4)
    torch.testing.assert_close(module(x, residual), F.layer_norm(residual + x, (SHAPE[-1],), eps=1e-5), **FP32)


def test_add_norm_parameters_and_defaults():
    ln, rms = tokennorm.AddNorm(8), tokennorm.AddNorm(8, norm="rmsnorm")
    assert ln.eps == 1e-5 and ln.bias is not None  # LayerNorm's defaults
    assert rms.eps is None and rms.bias is None  # RMSNorm's defaults
    bare = tokennorm.AddNorm((2, 4), elementwise_affine=False)
    assert bare.weight is None and bare.bias is None and bare.normalized_shape == (2, 4)
    typed = tokennorm.AddNorm(8, device="meta", dtype=torch.bfloat16)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in typed.parameters())


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(norm="batchnorm"), "norm"),
        (dict(norm="LayerNorm"), "norm"),
        (dict(placement="middle"), "placement"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
    ],
)
def test_add_norm_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        tokennorm.AddNorm(8, **kwargs)
