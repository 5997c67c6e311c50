"""tokennorm.channels_first_layer_norm / ChannelsFirstLayerNorm: equal to permute + torch's LayerNorm + permute
(values and gradients), against the float64 reference, on images, audio and volumes, and against the real
ConvNeXt layer norm of transformers."""

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm import reference as R

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def _permuted(x, w, b, eps):
    """What timm's LayerNorm2d and ConvNeXt do: channels last, torch's LayerNorm, channels first again."""
    perm = [0, *range(2, x.dim()), 1]
    inverse = [0, x.dim() - 1, *range(1, x.dim() - 1)]
    return F.layer_norm(x.permute(perm), x.shape[1:2], w, b, eps).permute(inverse)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 4, 11), (1, 3, 2, 3, 4), (2, 1, 4, 4), (4, 5)])
@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
def test_equals_the_permute_composition_and_the_reference(shape, dtype):
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=F64) * 2 + 3).to(dtype)
    p_dtype = F32 if dtype in (BF16, F16) else dtype
    w, b = (1 + 0.1 * torch.randn(c, generator=g, dtype=F64)).to(p_dtype), torch.randn(c, generator=g).to(p_dtype)
    dy = torch.randn(shape, generator=g, dtype=F64).to(dtype)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = fn(*leaves, 1e-6)
        y.backward(dy)
        return y, *(t.grad for t in leaves)

    # dx's terms are rstd·dy·γ: with one channel rstd = 1/sqrt(ε) = 1000 and torch's own dx (exactly 0 in math)
    # is off by ~u·1000; bounds on dx scale with the largest term, as `tokennorm verify`'s do
    rstd = torch.rsqrt(x.double().var(1, correction=0) + 1e-6).max().item()
    term = rstd * dy.double().abs().max().item() * w.double().abs().max().item()
    ours, theirs = run(tokennorm.channels_first_layer_norm), run(_permuted)
    for i, (a, e) in enumerate(zip(ours, theirs)):
        assert a.dtype == e.dtype and a.shape == e.shape
        if dtype in (F32, F64):
            torch.testing.assert_close(a, e, rtol=0, atol=0)  # the same torch kernel on the same channels-last view
        elif i < 2:  # float32 parameters: y and dx computed in float32, rounded once: ≤ 1 ulp from torch's (dx:
            # of its largest term rstd·|dy·γ|, which is 1000·|dy·γ| with one channel, where dx = 0 exactly)
            u = 2.0 ** -(8 if dtype == BF16 else 11)
            torch.testing.assert_close(a, e, rtol=2 * u, atol=1e-6 if i == 0 else 2 * u * term)
        # (torch's CPU mixed-dtype backward gives float32 dγ/dβ off by ~1e-2 relative; ours are checked against
        # the float64 reference below)
    ref = R.layer_norm_channels_first(x.double(), w.double(), b.double(), 1e-6)
    grads = R.layer_norm_channels_first_backward(dy.double(), x.double(), w.double(), b.double(), 1e-6)
    tol = {F64: 1e-10, F32: 1e-5, BF16: 3e-2, F16: 4e-3}[dtype]
    torch.testing.assert_close(ours[0].double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ours[1].double(), grads.dx, rtol=tol, atol=tol * term)
    # dγ = Σ dy·x̂ and dβ = Σ dy in the parameters' dtype, a sum over every pixel: bound by the sum of |terms|
    # (x̂ in its uncentred form |x|·rstd: with one channel x̂ = 0 exactly, but x − mean rounds, times rstd = 1000)
    xhat = x.double().abs() * torch.rsqrt(x.double().var(1, correction=0, keepdim=True) + 1e-6)
    p_tol = {F64: 1e-12, F32: 1e-6}[p_dtype]
    for got, want, terms in ((ours[2], grads.dweight, dy.double() * xhat), (ours[3], grads.dbias, dy.double())):
        bound = p_tol * terms.abs().movedim(1, -1).reshape(-1, c).sum(0).max().item()
        assert (got.double() - want).abs().max().item() <= bound


def test_module_is_a_torch_layernorm_with_timms_parameters():
    m = tokennorm.ChannelsFirstLayerNorm(8, eps=1e-6)
    assert isinstance(m, torch.nn.LayerNorm) and m.normalized_shape == (8,)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"weight": (8,), "bias": (8,)}
    assert tokennorm.ChannelsFirstLayerNorm(8, bias=False).bias is None
    assert tokennorm.ChannelsFirstLayerNorm(8, elementwise_affine=False).weight is None
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(m(x), _permuted(x, m.weight, m.bias, 1e-6), rtol=0, atol=0)


def test_channels_last_memory_format_input():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    w, b = torch.randn(8), torch.randn(8)
    torch.testing.assert_close(tokennorm.channels_first_layer_norm(x, w, b), _permuted(x.contiguous(), w, b, 1e-5))


def test_statistics_are_per_pixel():
    """Changing one pixel's channels changes only that pixel's output."""
    x = torch.randn(1, 4, 3, 3)
    y = tokennorm.channels_first_layer_norm(x)
    x2 = x.clone()
    x2[0, :, 1, 1] = torch.randn(4) * 10
    changed = (tokennorm.channels_first_layer_norm(x2) != y).any(dim=1)[0]
    assert changed.sum() == 1 and changed[1, 1]


def test_matches_transformers_convnext_layer_norm():
    convnext = pytest.importorskip("transformers.models.convnext.modeling_convnext")
    theirs = convnext.ConvNextLayerNorm(12, eps=1e-6, data_format="channels_first")
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = tokennorm.ChannelsFirstLayerNorm(12, eps=1e-6)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 12, 6, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_edges_and_errors():
    assert tokennorm.channels_first_layer_norm(torch.randn(0, 4, 3, 3)).shape == (0, 4, 3, 3)
    assert tokennorm.channels_first_layer_norm(torch.randn(2, 4, 0)).shape == (2, 4, 0)
    x = torch.randn(1, 3, 2)
    x[0, 1, 0] = float("nan")
    y = tokennorm.channels_first_layer_norm(x)
    assert y[0, :, 0].isnan().all() and y[0, :, 1].isfinite().all()
    before = x.clone()
    tokennorm.channels_first_layer_norm(x)
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(RuntimeError, match="at least 2-D"):
        tokennorm.channels_first_layer_norm(torch.randn(5))
    with pytest.raises(RuntimeError, match="Expected weight to be of same shape"):
        tokennorm.channels_first_layer_norm(torch.randn(2, 4, 3), torch.ones(3))
    with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
        tokennorm.channels_first_layer_norm(torch.ones(2, 4, 3, dtype=torch.long))
