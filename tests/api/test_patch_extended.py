"""tokennorm.patch on diffusers' adaptive norms and on channels-first LayerNorms: small random models built from
the real classes (diffusers' DiT and SD3 transformers, transformers' ConvNeXt), outputs equal after patching,
state_dicts kept, unpatch restoring; look-alikes left with their reason. timm's norms: test_patch_timm.py."""

import pytest
import torch
from torch import nn

import tokennorm
from tokennorm.patching import PatchedAdaLayerNormContinuous

diffusers = pytest.importorskip("diffusers")
normalization = pytest.importorskip("diffusers.models.normalization")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 and "weight" in str(p) else 0.0))
    return model


def _report_kinds(model):
    return sorted((r.from_class, r.to_class) for r in tokennorm.patch_report(model).replaced)


@pytest.mark.slow
def test_dit_transformer_patched_equal_and_restored():
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    ).eval()
    _randomize(dit)
    x, t, labels = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([1, 3])
    want = dit(x, timestep=t, class_labels=labels).sample
    keys = dit.state_dict().keys()
    tokennorm.patch(dit)
    assert ("AdaLayerNormZero", "tokennorm.patching.PatchedAdaLayerNormZero") in _report_kinds(dit)
    assert dit.state_dict().keys() == keys
    torch.testing.assert_close(dit(x, timestep=t, class_labels=labels).sample, want, rtol=2e-5, atol=2e-5)
    tokennorm.unpatch(dit)
    assert type(dit.transformer_blocks[0].norm1) is normalization.AdaLayerNormZero
    assert type(dit.transformer_blocks[0].norm1.norm) is nn.LayerNorm  # its child was never swapped


@pytest.mark.slow
def test_sd3_transformer_zero_and_continuous():
    torch.manual_seed(0)
    sd3 = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=12,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()
    _randomize(sd3, 1)
    args = dict(
        hidden_states=torch.randn(2, 4, 8, 8),
        encoder_hidden_states=torch.randn(2, 3, 16),
        pooled_projections=torch.randn(2, 12),
        timestep=torch.tensor([10, 500]),
    )
    want = sd3(**args).sample
    tokennorm.patch(sd3)
    kinds = _report_kinds(sd3)
    assert ("AdaLayerNormContinuous", "tokennorm.patching.PatchedAdaLayerNormContinuous") in kinds
    assert ("AdaLayerNormZero", "tokennorm.patching.PatchedAdaLayerNormZero") in kinds
    torch.testing.assert_close(sd3(**args).sample, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: normalization.AdaLayerNormZero(16),
        lambda: normalization.AdaLayerNormZero(16, norm_type="fp32_layer_norm"),
        lambda: normalization.AdaLayerNormContinuous(16, 8),
        lambda: normalization.AdaLayerNormContinuous(16, 8, elementwise_affine=False, eps=1e-6),
        lambda: normalization.AdaLayerNormContinuous(16, 8, norm_type="rms_norm", eps=1e-6),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_adaptive_class_in_each_dtype(make, dtype):
    module = _randomize(make()).to(dtype)
    x = torch.randn(3, 7, 16, dtype=dtype)
    zero = isinstance(module, normalization.AdaLayerNormZero)
    args = (x, None, None, None, torch.randn(3, 16, dtype=dtype)) if zero else (x, torch.randn(3, 8, dtype=dtype))
    want = module(*args)
    patched = tokennorm.patch(nn.Sequential(module))
    assert len(tokennorm.patch_report(patched).replaced) == 1, tokennorm.patch_report(patched)
    got = patched[0](*args)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=4e-2)
    for g, w in zip(got if zero else (got,), want if zero else (want,)):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, **tol)
    assert _report_kinds(tokennorm.patch(patched)) == []  # patching again changes nothing


def test_norms_option_and_a_subclass_with_its_own_forward():
    class ShiftedAdaLayerNorm(normalization.AdaLayerNormContinuous):  # not diffusers' class: computes something else
        def forward(self, x, c):
            return super().forward(x, c) + 1

    model = nn.ModuleDict(dict(a=normalization.AdaLayerNormContinuous(16, 8), b=ShiftedAdaLayerNorm(16, 8)))
    tokennorm.patch(model, norms="rmsnorm")
    left = {x.path: x.reason for x in tokennorm.patch_report(model).left}
    assert tokennorm.patch_report(model).replaced == () and "not in norms=('rmsnorm',)" in left["a"]
    tokennorm.patch(model)
    left = {x.path: x.reason for x in tokennorm.patch_report(model).left}
    assert type(model["b"]) is ShiftedAdaLayerNorm and "has submodules" in left["b"]
    assert type(model["a"]) is PatchedAdaLayerNormContinuous and "a" not in left


def test_transformers_convnext_channels_first_norms():
    convnext = pytest.importorskip("transformers.models.convnext.modeling_convnext")
    config = pytest.importorskip("transformers").ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16
    )
    model = _randomize(convnext.ConvNextModel(config)).eval()
    img = torch.randn(2, 3, 16, 16)
    want = model(img).last_hidden_state
    tokennorm.patch(model)
    report = tokennorm.patch_report(model)
    kinds = {(r.kind, r.to_class) for r in report.replaced}
    assert ("layernorm, channels first", "tokennorm.ChannelsFirstLayerNorm") in kinds
    assert ("layernorm", "tokennorm.LayerNorm") in kinds  # its channels-last norms
    torch.testing.assert_close(model(img).last_hidden_state, want, rtol=1e-5, atol=1e-5)
    assert isinstance(model.embeddings.layernorm, tokennorm.ChannelsFirstLayerNorm)
    tokennorm.unpatch(model)
    assert type(model.embeddings.layernorm) is convnext.ConvNextLayerNorm


class UnbiasedChannelNorm(nn.Module):
    """A look-alike: channels-first, but with the unbiased (n − 1) variance."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u, s = x.mean(1, keepdim=True), x.var(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + self.eps) + self.bias[:, None, None]


def test_channels_first_look_alike_is_left():
    model = tokennorm.patch(nn.Sequential(UnbiasedChannelNorm(6)))
    report = tokennorm.patch_report(model)
    assert report.replaced == () and len(report.left) == 1
    assert type(model[0]) is UnbiasedChannelNorm
