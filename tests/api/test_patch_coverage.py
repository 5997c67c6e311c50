"""``tokennorm.patch`` on the norms it used to leave (issue 14, item 14), with the real transformers classes:
CohereLayerNorm / Cohere2LayerNorm (LayerNorm without bias that takes a bfloat16 weight with a float32 input),
OlmoLayerNorm (no parameters, ε fixed at 1e-5 in its forward) and Gemma4RMSNorm(with_scale=False) (no
parameters, any width). Each replacement must give the original's output dtype, values and gradients for every
parameter × input dtype pair the original accepts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tokennorm
from tokennorm import reference
from tokennorm.patching import PatchedLastDimNorm, PatchedLayerNorm, patch, patch_report, unpatch

transformers = pytest.importorskip("transformers")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Relative to the output's scale: a few ulps of the lowest precision involved (the original computes in
# float32 and rounds once; so do torch's kernels under tokennorm, in another order).
RTOL = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-6}


def _cohere(cls_name: str, module: str, dim):
    cls = getattr(__import__(f"transformers.models.{module}.modeling_{module}", fromlist=[cls_name]), cls_name)
    norm = cls(dim, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape) * 0.5 + 1)
    return norm


def cohere():
    return _cohere("CohereLayerNorm", "cohere", 16)


def cohere2():
    return _cohere("Cohere2LayerNorm", "cohere2", 16)


def olmo():
    from transformers.models.olmo.modeling_olmo import OlmoLayerNorm

    return OlmoLayerNorm(16)


def gemma4_without_scale():
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm

    return Gemma4RMSNorm(16, eps=1e-6, with_scale=False)


# (build the original, what it must become, kind, eps, cast_parameters)
NORMS = {
    "CohereLayerNorm": (cohere, PatchedLayerNorm, "layernorm", 1e-5, True),
    "Cohere2LayerNorm": (cohere2, PatchedLayerNorm, "layernorm", 1e-5, True),
    "OlmoLayerNorm": (olmo, tokennorm.LayerNorm, "layernorm", 1e-5, False),
    "Gemma4RMSNorm(with_scale=False)": (gemma4_without_scale, PatchedLastDimNorm, "rmsnorm", 1e-6, False),
}


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _output_and_grads(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    y = module(x)
    y.backward(dy.to(y.dtype))
    params = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, params


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", NORMS)
def test_replaced_with_the_original_dtype_behaviour(name):
    build, cls, kind, eps, cast = NORMS[name]
    original = build()
    model = patch(nn.Sequential(original))
    (r,) = patch_report(model).replaced
    assert type(model[0]) is cls and (r.kind, r.eps, r.dtype_rule, r.cast_parameters) == (kind, eps, "input", cast)
    assert not patch_report(model).left
    new = model[0]
    if original._parameters.get("weight") is not None:
        assert new.weight is original.weight  # the very Parameter: optimizers and state_dicts stay valid
    # outputs, input gradients and weight gradients equal the original's for every dtype pair it accepts
    x64 = torch.randn(3, 5, 16, dtype=torch.float64) * 2 + 0.5
    dy = torch.randn(3, 5, 16, dtype=torch.float64)
    compared = 0
    for p_dtype in DTYPES:
        orig_p, new_p = copy.deepcopy(original).to(p_dtype), copy.deepcopy(new).to(p_dtype)
        if orig_p._parameters.get("weight") is not None:
            new_p.weight = orig_p.weight  # one Parameter, as after patch()
        for x_dtype in (*DTYPES, torch.float64):
            x = x64.to(x_dtype)
            try:
                want = _output_and_grads(orig_p, x, dy)
            except RuntimeError:
                continue
            got = _output_and_grads(new_p, x, dy)
            tol = max(RTOL[p_dtype], RTOL[x_dtype])
            assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype, (p_dtype, x_dtype)
            assert _rel_diff(got[0], want[0]) < tol, ("y", p_dtype, x_dtype)
            assert _rel_diff(got[1], want[1]) < tol, ("dx", p_dtype, x_dtype)
            for pname, grad in want[2].items():
                assert got[2][pname].dtype == grad.dtype and _rel_diff(got[2][pname], grad) < tol, (pname,)
            compared += 1
    assert compared >= 4 if original._parameters.get("weight") is None else compared >= 10


def test_cohere_bfloat16_weight_with_float32_input_is_the_float32_math():
    original = cohere().to(torch.bfloat16)
    new = patch(copy.deepcopy(original))
    x = torch.randn(4, 16)
    want = reference.layer_norm(x.double(), (16,), original.weight.double(), None, 1e-5)
    got = new(x)
    assert got.dtype == torch.float32 == original(x).dtype
    assert _rel_diff(got, want) < 1e-6
    with pytest.raises(RuntimeError):  # what torch's own LayerNorm does with this mix: the cast is the point
        torch.nn.functional.layer_norm(x, (16,), original.weight)


def test_olmo_layer_norm_epsilon_found_without_an_attribute():
    new = patch(olmo())
    assert new.eps == 1e-5 and new.weight is None and new.bias is None
    x = torch.randn(2, 16) * 1e-3  # at this scale ε = 1e-5 against 1e-6 changes y by ~1e-1
    assert _rel_diff(new(x), reference.layer_norm(x.double(), (16,), eps=1e-5)) < 1e-6


def test_a_fixed_epsilon_that_is_not_a_usual_one_is_left_and_said_so():
    class FixedEpsNorm(nn.Module):  # OlmoLayerNorm's shape with an unusual constant
        def __init__(self):
            super().__init__()
            self.normalized_shape = (16,)

        def forward(self, x):
            return torch.nn.functional.layer_norm(x, self.normalized_shape, eps=1e-3)

    model = patch(nn.Sequential(FixedEpsNorm()))
    (left,) = patch_report(model).left
    assert "no eps attribute" in left.reason and "1e-05" in left.reason
    assert type(model[0]) is FixedEpsNorm


def test_gemma4_without_scale_takes_any_width_like_the_original():
    original = gemma4_without_scale()
    new = patch(original)
    assert isinstance(new, PatchedLastDimNorm) and not list(new.parameters())
    for shape in [(2, 3, 16), (5, 24), (7, 1), (2, 0, 8)]:
        x = torch.randn(shape)
        assert new(x).shape == x.shape
        torch.testing.assert_close(new(x), original(x), rtol=2e-6, atol=1e-6)
    assert unpatch(new) is original
    assert patch_report(patch(new)).left[0].reason == "already a tokennorm module"


def test_tiny_cohere_and_olmo_models_patch_every_norm_with_equal_outputs():
    for config_cls, model_cls, n_norms in (
        (transformers.CohereConfig, transformers.CohereModel, 3),  # input_layernorm ×2 layers, final norm
        (transformers.OlmoConfig, transformers.OlmoModel, 5),  # 2 per layer, final norm
    ):
        config = config_cls(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = model_cls(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(torch.randn_like(p) * 0.5 + 1)
        ids = torch.randint(0, 64, (2, 7))
        with torch.no_grad():
            before = model(ids).last_hidden_state
            model = patch(model)
            after = model(ids).last_hidden_state
        report = patch_report(model)
        assert len(report.replaced) == n_norms and not report.left, str(report)
        assert _rel_diff(after, before) < 1e-5


def test_cohere_qk_norm_with_per_head_weights_is_left():
    """Cohere's QK norm (hidden_size=(heads, head_dim)) normalizes each head's last dim but weights every head
    differently: no tokennorm norm computes that, so it stays, with the reason."""
    qk = _cohere("CohereLayerNorm", "cohere", (4, 16))
    model = patch(nn.Sequential(qk))
    (left,) = patch_report(model).left
    assert "computes no norm tokennorm has" in left.reason and model[0] is qk
