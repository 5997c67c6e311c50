"""Blocks with norm="dyt" and with AdaLN-Zero conditioning (cond_dim): each equal to an independent composition
of its own submodules, identity at initialisation (AdaLN-Zero), causal, and with clear errors."""

import pytest
import torch
import torch.nn.functional as F

from tokennorm.transformer import CausalLM, DecoderLayer, Encoder, EncoderLayer


def _dyt(m, x):
    return m.weight * torch.tanh(m.alpha * x) + m.bias


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_dyt_encoder_layer_is_the_dyt_composition(placement):
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, dropout=0.0, norm="dyt", placement=placement).eval()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("norm"):
                p.normal_()
    x = torch.randn(2, 5, 16)

    def attn(y):
        return layer.self_attn(y)

    if placement == "post":
        x1 = _dyt(layer.norm1, x + attn(x))
        want = _dyt(layer.norm2, x1 + layer.ff(x1))
    else:
        h = x + attn(_dyt(layer.norm1, x))
        want = h + layer.ff(_dyt(layer.norm2, h))
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_dyt_causal_lm_trains_alpha():
    model = CausalLM(11, d_model=16, nhead=2, num_layers=2, norm="dyt", placement="pre")
    logits = model(torch.randint(0, 11, (2, 6)))
    F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 11, (12,))).backward()
    alpha = model.decoder.layers[0].norm2.alpha
    assert alpha.grad is not None and alpha.grad.abs().item() > 0
    assert type(model.decoder.norm).__name__ == "DyT"  # the pre-LN stack's final norm


def _randomize(adaln):
    with torch.no_grad():
        adaln.linear.weight.normal_(std=0.3)
        adaln.linear.bias.normal_(std=0.3)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_adaln_zero_encoder_layer_is_dits_block(norm):
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, dropout=0.0, norm=norm, placement="pre", cond_dim=8, eps=1e-6).eval()
    x, c = torch.randn(3, 5, 16), torch.randn(3, 8)
    torch.testing.assert_close(layer(x, cond=c), x, rtol=0, atol=0)  # zero-initialised: the identity
    _randomize(layer.adaln)

    def normed(t):
        return F.layer_norm(t, (16,), eps=1e-6) if norm == "layernorm" else F.rms_norm(t, (16,), eps=1e-6)

    # DiT's block, written out (facebookresearch/DiT models.py: modulate(x, shift, scale) = x·(1 + scale) + shift)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = layer.adaln.linear(F.silu(c)).chunk(6, dim=1)
    h = x + gate_msa[:, None] * layer.self_attn(normed(x) * (1 + scale_msa[:, None]) + shift_msa[:, None])
    want = h + gate_mlp[:, None] * layer.ff(normed(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
    torch.testing.assert_close(layer(x, cond=c), want, rtol=1e-5, atol=1e-5)
    assert not any(n.startswith("norm") for n, _ in layer.named_modules())  # no parameter-free norm modules


def test_conditioned_decoder_with_cross_attention_and_stack():
    torch.manual_seed(0)
    layer = DecoderLayer(16, 2, 32, dropout=0.0, placement="pre", cond_dim=4, cross_attention=True).eval()
    assert len(layer.adaln(torch.randn(1, 4))) == 3
    x, memory, c = torch.randn(2, 6, 16), torch.randn(2, 3, 16), torch.randn(2, 4)
    torch.testing.assert_close(layer(x, memory, cond=c), x, rtol=0, atol=0)
    _randomize(layer.adaln)
    y = layer(x, memory, cond=c)
    # causal: the first 3 outputs do not depend on tokens 3..5
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 3, 16)
    torch.testing.assert_close(layer(x2, memory, cond=c)[:, :3], y[:, :3], rtol=1e-6, atol=1e-6)
    # each batch item is conditioned on its own vector only
    c2 = c.clone()
    c2[1] = torch.randn(4)
    y2 = layer(x, memory, cond=c2)
    torch.testing.assert_close(y2[0], y[0], rtol=0, atol=0)
    assert not torch.allclose(y2[1], y[1])
    stack = Encoder(EncoderLayer(16, 2, 32, placement="pre", cond_dim=4), num_layers=2).eval()
    assert stack(x, cond=c).shape == x.shape


def test_conditioning_errors():
    with pytest.raises(ValueError, match="cond_dim .* needs placement='pre'"):
        EncoderLayer(16, 2, placement="post", cond_dim=4)
    with pytest.raises(ValueError, match="norm 'layernorm' or 'rmsnorm'"):
        EncoderLayer(16, 2, placement="pre", norm="dyt", cond_dim=4)
    layer = EncoderLayer(16, 2, placement="pre", cond_dim=4)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="cond is required"):
        layer(x)
    with pytest.raises(ValueError, match=r"cond of shape \[batch, cond_dim\] = \[2, 4\]"):
        layer(x, cond=torch.randn(3, 4))
    with pytest.raises(ValueError, match="cond needs a EncoderLayer built with cond_dim"):
        EncoderLayer(16, 2)(x, cond=torch.randn(2, 4))
    assert "cond_dim=4" in repr(layer)
