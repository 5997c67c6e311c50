"""tokennorm.patch on timm's channels-first LayerNorms (timm.layers.norm: LayerNorm2d, LayerNormExp2d) and its
channels-last LayerNorm, in a small random conv stack: outputs and gradients equal after patching, ε and
state_dict kept, unpatch restoring, timm's channels-first RMSNorm left alone (tokennorm has no such op).

timm's package ``__init__`` imports torchvision, whose compiled ops do not load beside every torch (not beside
the CPU build of torch 2.13 that CI uses), and its wheel's dependencies would replace the user's torch; so
``scripts/install.sh dev`` installs timm without dependencies, and this file imports ``timm.layers.norm`` (which
needs only torch) without running the ``timm`` and ``timm.layers`` package initialisers."""

import importlib.util
import sys
import types

import pytest
import torch
from torch import nn

import tokennorm


def _import_timm_norm():
    if "timm" in sys.modules:  # a working timm, imported by someone else
        from timm.layers import norm

        return norm
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (scripts/install.sh dev installs it)", allow_module_level=True)
    root = list(spec.submodule_search_locations)[0]
    try:
        for name, path in (("timm", root), ("timm.layers", f"{root}/layers")):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        from timm.layers import norm

        return norm
    finally:  # leave no half-initialised timm behind: a later `import timm` runs its own initialiser
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]


timm_norm = _import_timm_norm()


class ConvStack(nn.Module):
    """ConvNeXt's pattern: a conv stem with a channels-first LayerNorm, a channels-last LayerNorm on permuted
    features, and the norms timm offers beside them."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.ln2d = timm_norm.LayerNorm2d(c)  # ε 1e-6 by default, as timm and ConvNeXt use
        self.ln_exp = timm_norm.LayerNormExp2d(c, eps=1e-5)
        self.rms2d = timm_norm.RmsNorm2d(c)
        self.ln_last = timm_norm.LayerNorm(c)

    def forward(self, img):
        x = self.rms2d(self.ln_exp(self.ln2d(self.stem(img))))
        return self.ln_last(x.permute(0, 2, 3, 1))


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name.endswith("weight") and p.dim() == 1 else 0))
    return model


def _forward_backward(model, img):
    img = img.detach().clone().requires_grad_(True)
    out = model(img)
    out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
    return out.detach(), img.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_timm_channels_first_layer_norms_patched_equal_and_restored():
    torch.manual_seed(0)
    model = _randomize(ConvStack())
    img = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    model = model.double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    want = _forward_backward(model, img)
    model.zero_grad()

    tokennorm.patch(model)
    report = tokennorm.patch_report(model)
    replaced = {r.path: (r.from_class, r.to_class, r.kind) for r in report.replaced}
    assert replaced["ln2d"] == ("LayerNorm2d", "tokennorm.ChannelsFirstLayerNorm", "layernorm, channels first")
    assert replaced["ln_exp"] == ("LayerNormExp2d", "tokennorm.ChannelsFirstLayerNorm", "layernorm, channels first")
    assert replaced["ln_last"][1] == "tokennorm.LayerNorm"
    assert "rms2d" not in replaced and {x.path for x in report.left} == {"rms2d"}
    assert isinstance(model.ln2d, tokennorm.ChannelsFirstLayerNorm) and model.ln2d.eps == 1e-6
    assert model.ln_exp.eps == 1e-5
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k

    got = _forward_backward(model, img)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-12, atol=1e-12, msg=name)

    tokennorm.unpatch(model)
    assert type(model.ln2d) is timm_norm.LayerNorm2d and type(model.ln_exp) is timm_norm.LayerNormExp2d
    assert type(model.ln_last) is timm_norm.LayerNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_timm_layer_norm_2d_in_low_precision(dtype):
    """The patched norm against timm's own in the model's dtype, within that dtype's rounding."""
    norm = _randomize(timm_norm.LayerNorm2d(16)).to(dtype)
    x = torch.randn(2, 16, 4, 4, dtype=dtype)
    want = norm(x)
    patched = tokennorm.patch(nn.Sequential(norm))[0]
    assert isinstance(patched, tokennorm.ChannelsFirstLayerNorm)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(patched(x), want, rtol=tol, atol=tol)
