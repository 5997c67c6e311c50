"""tokennorm.channels_first_layer_norm / ChannelsFirstLayerNorm on the Triton path: which kernel each layout takes
— contiguous [B, C, *] the channels-first kernel, channels stored last (channels_last images, transposed sequences)
the rows kernels without a copy, too many channels the rows kernels on a channels-last copy — each equal to
permute + LayerNorm + permute (values and gradients) and to the float64 reference. The kernel itself is tested in
tests/kernels/test_channels_first_kernels.py."""

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm import reference as R
from tokennorm.kernels import launch

pytestmark = pytest.mark.interpret

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16


def _permuted(x, w, b, eps):
    perm = [0, *range(2, x.dim()), 1]
    inverse = [0, x.dim() - 1, *range(1, x.dim() - 1)]
    return F.layer_norm(x.permute(perm), x.shape[1:2], w, b, eps).permute(inverse)


def _counted(monkeypatch):
    """Which launcher each call reaches: {'channels_first': n, 'rows': n}."""
    calls = {"channels_first": 0, "rows": 0}
    for name, key in (("channels_first_forward", "channels_first"), ("norm_forward", "rows")):
        real = getattr(launch, name)
        monkeypatch.setattr(
            launch,
            name,
            lambda *a, _real=real, _key=key, **k: calls.__setitem__(_key, calls[_key] + 1) or _real(*a, **k),
        )
    return calls


def _run(x, w, b, eps=1e-6):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = tokennorm.channels_first_layer_norm(*leaves, eps=eps)
    y.backward(torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y).to(y.dtype))
    return y, *(t.grad for t in leaves)


@pytest.mark.parametrize("layout", ["image", "audio", "channels_last", "transposed-sequence", "sliced"])
def test_each_layout_takes_its_kernel_and_equals_the_permute_composition(triton_backend, monkeypatch, layout):
    g = torch.Generator().manual_seed(0)
    make = {
        "image": lambda: torch.randn(2, 12, 5, 3, generator=g),
        "audio": lambda: torch.randn(3, 12, 10, generator=g),
        "channels_last": lambda: torch.randn(2, 12, 5, 3, generator=g).to(memory_format=torch.channels_last),
        "transposed-sequence": lambda: torch.randn(3, 10, 12, generator=g).transpose(1, 2),
        "sliced": lambda: torch.randn(2, 12, 5, 6, generator=g)[..., ::2],
    }
    x = (make[layout]() * 2 + 1).to(triton_backend)
    w, b = (1 + 0.1 * torch.randn(12, generator=g)).to(triton_backend), torch.randn(12, generator=g).to(triton_backend)
    calls = _counted(monkeypatch)
    ours = _run(x, w, b)
    expected = "rows" if layout in ("channels_last", "transposed-sequence") else "channels_first"
    assert calls[expected] == 1 and sum(calls.values()) == 1, calls
    with tokennorm.using_backend("torch"):
        theirs = _run(x, w, b)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=2e-5, atol=2e-5)


def test_bf16_with_float32_parameters_matches_the_reference(triton_backend):
    """torch's CUDA LayerNorm refuses bf16 x with float32 γ/β; the kernel computes it in float32."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 16, 4, 4, generator=g) * 2 + 3).to(BF16)
    w, b = 1 + 0.1 * torch.randn(16, generator=g), torch.randn(16, generator=g)
    y, dx, dw, db = _run(x.to(triton_backend), w.to(triton_backend), b.to(triton_backend))
    dy = torch.linspace(-1, 1, y.numel()).view_as(y).to(BF16)
    ref = R.layer_norm_channels_first(x.double(), w.double(), b.double(), 1e-6)
    grads = R.layer_norm_channels_first_backward(dy.double(), x.double(), w.double(), b.double(), 1e-6)
    assert y.dtype == BF16 and dw.dtype == F32
    torch.testing.assert_close(y.double().cpu(), ref, rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(dx.double().cpu(), grads.dx, rtol=2**-7, atol=2**-6)
    torch.testing.assert_close(dw.double().cpu(), grads.dweight, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(db.double().cpu(), grads.dbias, rtol=1e-5, atol=1e-4)


def test_too_many_channels_for_registers_take_a_channels_last_copy(triton_backend, monkeypatch):
    x = torch.randn(1, 1100, 2, 2, device=triton_backend)
    calls = _counted(monkeypatch)
    y = tokennorm.channels_first_layer_norm(x)
    assert calls == {"channels_first": 0, "rows": 1}
    torch.testing.assert_close(y, _permuted(x, None, None, 1e-5), rtol=1e-5, atol=1e-5)


def test_module_equals_transformers_convnext_norm_and_keeps_tokens_apart(triton_backend):
    convnext = pytest.importorskip("transformers.models.convnext.modeling_convnext")
    theirs = convnext.ConvNextLayerNorm(12, eps=1e-6, data_format="channels_first")
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours = tokennorm.ChannelsFirstLayerNorm(12, eps=1e-6)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 12, 6, 5)
    torch.testing.assert_close(ours.to(triton_backend)(x.to(triton_backend)).cpu(), theirs(x), rtol=2e-5, atol=2e-5)
    x2 = x.clone()
    x2[0, :, 1, 1] = torch.randn(12) * 10
    changed = (ours(x2.to(triton_backend)) != ours(x.to(triton_backend))).any(dim=1)[0]
    assert changed.sum() == 1 and changed[1, 1]
