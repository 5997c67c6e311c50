"""Blocks with AdaLN-Zero conditioning and with norm="dyt" on the Triton backend give the torch backend's outputs
and input gradients (float32 roundoff): the fused ops in place of the compositions, through the blocks' wiring."""

import pytest
import torch

import tokennorm
from tokennorm.transformer import EncoderLayer

pytestmark = pytest.mark.interpret


@pytest.mark.parametrize(
    "kw",
    [dict(placement="pre", cond_dim=8), dict(norm="dyt", placement="pre"), dict(norm="dyt", placement="post")],
    ids=["adaln-zero", "dyt-pre", "dyt-post"],
)
def test_block_equals_the_torch_backend(triton_backend, kw):
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, dropout=0.0, **kw).to(triton_backend)
    with torch.no_grad():  # AdaLN-Zero starts as the identity: move every parameter off its initial value
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 16, device=triton_backend, requires_grad=True)
    cond = {"cond": torch.randn(2, 8, device=triton_backend)} if "cond_dim" in kw else {}
    results = []
    for backend in ("triton", "torch"):
        x.grad = None
        layer.zero_grad()
        with tokennorm.using_backend(backend):
            y = layer(x, **cond)
            y.square().sum().backward()
        results.append([y.detach(), x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
