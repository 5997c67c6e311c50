"""tokennorm.transformer against torch's own Transformer layers, the seed's formulas, and causality.

All parity checks run in float32 on the torch backend (TOKENNORM_BACKEND=auto on CPU). Our layers run the
same math as torch's in the same order, so fp32 outputs and gradients agree to a few ulps; torch's default
float32 tolerances (rtol 1.3e-6, atol 1e-5) are used unless a case says otherwise.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import tokennorm
from tokennorm.transformer import (
    CausalLM,
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    FeedForward,
    MultiHeadAttention,
    SequenceBatchNorm,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    _convert,
)

D, H, FF = 32, 4, 48


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny shapes: one thread avoids OpenMP hand-offs that cost ~10 ms per op on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _torch_param(layer: nn.Module, name: str) -> tuple[torch.Tensor, slice]:
    """torch's parameter holding our parameter ``name`` (q/k/v are row blocks of the packed in_proj)."""
    name = name.replace("cross_attn.", "multihead_attn.").replace("ff.", "")
    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        if f".{proj}." in name:
            attn, kind = name.split(f".{proj}.")
            packed = getattr(getattr(layer, attn), f"in_proj_{kind}")
            rows = packed.shape[0] // 3
            return packed, slice(i * rows, (i + 1) * rows)
    return layer.get_parameter(name), slice(None)


def _assert_same_grads(ours: nn.Module, theirs: nn.Module) -> None:
    covered = 0
    for name, p in ours.named_parameters():
        tp, rows = _torch_param(theirs, name)
        assert_close(p.grad, tp.grad[rows], msg=lambda m: f"grad of {name}: {m}")
        covered += p.numel()
    assert covered == sum(p.numel() for p in theirs.parameters())


def _causal(n: int) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(n)


def _padding(batch: int, n: int) -> torch.Tensor:
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask[0, n - 2 :] = True
    mask[-1, n - 1 :] = True
    return mask


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masks", ["none", "padding+causal"])
def test_encoder_layer_from_torch_matches_outputs_and_gradients(norm_first, activation, masks):
    theirs = nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.1, activation=activation, layer_norm_eps=1e-6, batch_first=True, norm_first=norm_first
    ).eval()
    ours = EncoderLayer.from_torch(theirs)
    assert not ours.training and ours.placement == ("pre" if norm_first else "post") and ours.eps == 1e-6
    x = torch.randn(3, 7, D) * 2 + 0.5
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    if masks == "none":
        y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    else:
        kpm = _padding(3, 7)
        y_ours = ours(x_ours, key_padding_mask=kpm, is_causal=True)
        y_theirs = theirs(x_theirs, src_key_padding_mask=kpm, src_mask=_causal(7).isinf(), is_causal=True)
    assert_close(y_ours, y_theirs)
    dy = torch.randn_like(y_ours)
    y_ours.backward(dy)
    y_theirs.backward(dy)
    assert_close(x_ours.grad, x_theirs.grad)
    _assert_same_grads(ours, theirs)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_from_torch_matches_outputs_and_gradients(norm_first, activation):
    theirs = nn.TransformerDecoderLayer(
        D, H, FF, dropout=0.2, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    ours = DecoderLayer.from_torch(theirs)
    x, memory = torch.randn(2, 6, D), torch.randn(2, 5, D)
    mkpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    tkpm = _padding(2, 6)
    args = [t.clone().requires_grad_() for t in (x, memory)], [t.clone().requires_grad_() for t in (x, memory)]
    y_ours = ours(*args[0], tgt_key_padding_mask=tkpm, memory_key_padding_mask=mkpm, causal=True)
    y_theirs = theirs(
        *args[1],
        tgt_mask=_causal(6).isinf(),
        tgt_key_padding_mask=tkpm,
        memory_key_padding_mask=mkpm,
        tgt_is_causal=True,
    )
    assert_close(y_ours, y_theirs)
    dy = torch.randn_like(y_ours)
    y_ours.backward(dy)
    y_theirs.backward(dy)
    for ours_in, theirs_in in zip(*args):
        assert_close(ours_in.grad, theirs_in.grad)
    _assert_same_grads(ours, theirs)


def test_decoder_layer_non_causal_matches_torch_without_tgt_mask():
    theirs = nn.TransformerDecoderLayer(D, H, FF, batch_first=True).eval()
    x, memory = torch.randn(2, 4, D), torch.randn(2, 3, D)
    assert_close(DecoderLayer.from_torch(theirs)(x, memory, causal=False), theirs(x, memory))


def test_from_torch_without_bias_and_in_training_mode_without_dropout():
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, bias=False, norm_first=True)
    ours = EncoderLayer.from_torch(theirs)
    assert ours.training and ours.norm2.bias is None and ours.self_attn.q_proj.bias is None
    x = torch.randn(2, 5, D)
    assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_rmsnorm_layer_matches_torch_layer_with_rmsnorm_modules(placement):
    # torch's encoder layer calls self.norm1/self.norm2 as modules, so swapping in nn.RMSNorm gives the
    # reference for our fused rmsnorm Add & Norm. Training mode without dropout: torch's eval-mode fast-path
    # check reads norm.bias, which RMSNorm lacks.
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=placement == "pre")
    theirs.norm1, theirs.norm2 = nn.RMSNorm(D, eps=1e-5), nn.RMSNorm(D, eps=1e-5)
    with torch.no_grad():
        theirs.norm1.weight.uniform_(0.5, 1.5)
        theirs.norm2.weight.uniform_(0.5, 1.5)
    ours = EncoderLayer(D, H, FF, dropout=0.0, norm="rmsnorm", placement=placement)
    _convert.copy_attention(ours.self_attn, theirs.self_attn)
    _convert.copy_feedforward(ours.ff, theirs)
    _convert.copy_norm(ours.norm1, theirs.norm1)
    _convert.copy_norm(ours.norm2, theirs.norm2)
    x_ours = torch.randn(2, 5, D).requires_grad_()
    x_theirs = x_ours.detach().clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert_close(y_ours, y_theirs)
    y_ours.sum().backward()
    y_theirs.sum().backward()
    assert_close(x_ours.grad, x_theirs.grad)
    assert_close(ours.norm2.weight.grad, theirs.norm2.weight.grad)


def test_layers_use_tokennorm_add_norm():
    post = EncoderLayer(D, H, FF, norm="layernorm", placement="post")
    pre = DecoderLayer(D, H, FF, norm="rmsnorm", placement="pre", cross_attention=False)
    assert isinstance(post.norm1, tokennorm.AddNorm) and isinstance(post.norm2, tokennorm.AddNorm)
    assert isinstance(pre.norm1, tokennorm.RMSNorm) and isinstance(pre.norm2, tokennorm.AddNorm)
    assert pre.norm2.placement == "pre" and not hasattr(pre, "norm3")


def test_encoder_stack_matches_torch_transformer_encoder():
    layer = nn.TransformerEncoderLayer(D, H, FF, batch_first=True, norm_first=True)
    theirs = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D), enable_nested_tensor=False).eval()
    ours = Encoder(EncoderLayer.from_torch(layer), 2).eval()
    assert ours.norm is not None and ours.layers[0].ff.linear1.weight is not ours.layers[1].ff.linear1.weight
    x, kpm = torch.randn(3, 6, D), _padding(3, 6)
    assert_close(ours(x, key_padding_mask=kpm), theirs(x, src_key_padding_mask=kpm))
    assert Encoder(EncoderLayer(D, H, FF, placement="post"), 1).norm is None
    assert Encoder(EncoderLayer(D, H, FF, placement="post"), 1, final_norm=True).norm is not None


def test_decoder_stack_matches_torch_transformer_decoder():
    layer = nn.TransformerDecoderLayer(D, H, FF, batch_first=True)
    theirs = nn.TransformerDecoder(layer, 2).eval()
    ours = Decoder(DecoderLayer.from_torch(layer), 2).eval()
    x, memory = torch.randn(2, 5, D), torch.randn(2, 4, D)
    assert_close(ours(x, memory), theirs(x, memory, tgt_mask=_causal(5), tgt_is_causal=True))


def _attention_pair(**kwargs):
    theirs = nn.MultiheadAttention(D, H, batch_first=True, **kwargs).eval()
    with torch.no_grad():
        theirs.in_proj_bias.normal_()
    ours = MultiHeadAttention(D, H).eval()
    _convert.copy_attention(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("mask_kind", ["bool_padding", "float_padding", "bool_2d", "float_3d", "causal+padding"])
def test_attention_masks_match_torch(mask_kind):
    ours, theirs = _attention_pair()
    q, kv = torch.randn(2, 5, D), torch.randn(2, 5, D)
    kpm = _padding(2, 5)
    if mask_kind == "bool_padding":
        ours_kw, theirs_kw = {"key_padding_mask": kpm}, {"key_padding_mask": kpm}
    elif mask_kind == "float_padding":
        fkpm = torch.zeros(2, 5).masked_fill(kpm, float("-inf"))
        ours_kw, theirs_kw = {"key_padding_mask": fkpm}, {"key_padding_mask": fkpm}
    elif mask_kind == "bool_2d":
        am = torch.rand(5, 5) < 0.3
        am.fill_diagonal_(False)
        ours_kw, theirs_kw = {"attn_mask": am}, {"attn_mask": am}
    elif mask_kind == "float_3d":
        am = torch.randn(2 * H, 5, 5)
        ours_kw, theirs_kw = {"attn_mask": am}, {"attn_mask": am}
    else:
        ours_kw = {"key_padding_mask": kpm, "is_causal": True}
        theirs_kw = {"key_padding_mask": kpm, "attn_mask": _causal(5).isinf(), "is_causal": True}
    assert_close(ours(q, kv, kv, **ours_kw), theirs(q, kv, kv, need_weights=False, **theirs_kw)[0])


def test_attention_weights_and_cross_lengths_match_torch():
    ours, theirs = _attention_pair()
    q, kv, kpm = torch.randn(2, 3, D), torch.randn(2, 6, D), _padding(2, 6)
    out, weights = ours(q, kv, key_padding_mask=kpm, need_weights=True)
    t_out, t_weights = theirs(q, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
    assert_close(out, t_out)
    assert_close(weights, t_weights)
    assert_close(ours(q, kv, key_padding_mask=kpm), out)  # the SDPA path equals the explicit one
    assert weights.shape == (2, H, 3, 6) and torch.all(weights[0, :, :, 4:] == 0)


def test_causal_attention_via_sdpa_flag_equals_explicit_mask():
    ours, _ = _attention_pair()
    x = torch.randn(2, 6, D)
    assert_close(ours(x, is_causal=True), ours(x, attn_mask=_causal(6).isinf()))


def test_positional_table_matches_the_formula_and_the_seed():
    d, max_len = 16, 4096
    pe = SinusoidalPositionalEncoding(d, max_len).pe
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float64)
    exact = torch.empty(max_len, d, dtype=torch.float64)
    exact[:, 0::2] = torch.sin(pos / 10000 ** (i / d))
    exact[:, 1::2] = torch.cos(pos / 10000 ** (i / d))
    # computed in float64 and rounded once: within one float32 ulp of 1 (1.2e-7) of the exact values
    assert_close(pe, exact.float(), rtol=0, atol=1.2e-7)
    assert pe[0, 0] == 0 and pe[0, 1] == 1 and pe[1, 0] == pytest.approx(math.sin(1.0), abs=1e-7)
    # the seed's float32 code: its angle pos·ω is rounded in float32, off by up to pos·2^-24 ≈ 2.4e-4 rad
    div_term = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    seed = torch.zeros(max_len, d)
    seed[:, 0::2] = torch.sin(pos.float() * div_term)
    seed[:, 1::2] = torch.cos(pos.float() * div_term)
    assert_close(pe[:64], seed[:64], rtol=0, atol=1e-5)
    assert_close(pe, seed, rtol=0, atol=1e-3)


def test_positional_encoding_adds_the_table_and_rejects_bad_input():
    module = SinusoidalPositionalEncoding(8, max_len=10)
    x = torch.randn(2, 10, 8)
    assert_close(module(x), x + module.pe[None])
    assert "pe" not in module.state_dict()
    with pytest.raises(ValueError, match=r"sequence length 11 exceeds .*max_len=10"):
        module(torch.randn(1, 11, 8))
    with pytest.raises(ValueError, match="even d_model.*d_model=7"):
        SinusoidalPositionalEncoding(7)
    with pytest.raises(ValueError, match=r"input of shape \[2, 10, 6\]"):
        module(torch.randn(2, 10, 6))


def test_token_embedding_is_scaled_by_sqrt_d_model():
    emb = TokenEmbedding(11, 16, padding_idx=0)
    tokens = torch.tensor([[0, 3, 10], [5, 5, 1]])
    assert isinstance(emb, nn.Embedding)
    assert_close(emb(tokens), F.embedding(tokens, emb.weight) * 4.0)
    assert torch.all(emb(tokens)[0, 0] == 0)
    big = TokenEmbedding(1000, 64)
    assert big(torch.arange(1000)).std().item() == pytest.approx(1.0, rel=0.05)  # unit variance after ×√d


def test_feedforward_computes_linear_activation_linear():
    ff = FeedForward(8, 12, activation="gelu")
    x = torch.randn(3, 8)
    assert_close(ff(x), ff.linear2(F.gelu(ff.linear1(x))))
    with pytest.raises(ValueError, match="activation.*'swish'"):
        FeedForward(8, 12, activation="swish")


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="d_model=30 and nhead=4"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="d_model=30 and nhead=4"):
        EncoderLayer(30, 4)
    attn = MultiHeadAttention(D, H)
    x = torch.randn(2, 5, D)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \[2, 5\].*\[2, 4\]"):
        attn(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask.*torch.int64"):
        attn(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn_mask must have shape \[5, 5\] or \[8, 5, 5\]"):
        attn(x, attn_mask=torch.zeros(2, 5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask.*torch.int32"):
        attn(x, attn_mask=torch.zeros(5, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"query must have shape \[batch, seq_len, 32\].*\[2, 5, 16\]"):
        attn(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="norm=.*'groupnorm'"):
        EncoderLayer(D, H, norm="groupnorm")
    with pytest.raises(ValueError, match="placement=.*'middle'"):
        DecoderLayer(D, H, placement="middle")
    with pytest.raises(ValueError, match="memory is required"):
        DecoderLayer(D, H)(x)
    with pytest.raises(ValueError, match="cross_attention=True"):
        DecoderLayer(D, H, cross_attention=False)(x, x)
    with pytest.raises(ValueError, match="exceeds.*max_len=8"):
        CausalLM(20, d_model=D, max_len=8)(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must be"):
        CausalLM(20, d_model=D)(torch.zeros(1, 4))


def test_from_torch_rejects_what_it_cannot_copy():
    with pytest.raises(ValueError, match="batch_first=True"):
        EncoderLayer.from_torch(nn.TransformerEncoderLayer(D, H, FF))
    with pytest.raises(ValueError, match="relu and gelu"):
        EncoderLayer.from_torch(nn.TransformerEncoderLayer(D, H, FF, batch_first=True, activation=torch.tanh))
    with pytest.raises(TypeError, match="TransformerDecoderLayer"):
        DecoderLayer.from_torch(nn.TransformerEncoderLayer(D, H, FF, batch_first=True))


def test_batchnorm_pools_tokens_and_sequences_layernorm_does_not():
    x = torch.randn(2, 5, D)
    bn = SequenceBatchNorm(D)
    assert_close(bn(x), F.batch_norm(x.reshape(-1, D), None, None, training=True, eps=bn.eps).view(2, 5, D))
    other = x.clone()
    other[1] += 3.0  # change only the second sequence
    for norm, leaks in (("batchnorm", True), ("layernorm", False), ("rmsnorm", False), ("none", False)):
        layer = EncoderLayer(D, H, FF, dropout=0.0, norm=norm)
        same = torch.allclose(layer(x)[0], layer(other)[0])
        assert same != leaks, norm


def test_no_norm_is_a_plain_residual():
    layer = EncoderLayer(D, H, FF, dropout=0.0, norm="none").eval()
    x = torch.randn(2, 4, D)
    h = x + layer.self_attn(x)
    assert_close(layer(x), h + layer.ff(h))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("placement", ["post", "pre"])
def test_causal_lm_is_causal_in_training_mode(norm, placement):
    model = CausalLM(23, d_model=D, nhead=H, num_layers=2, norm=norm, placement=placement).train()
    tokens = torch.randint(0, 23, (3, 9))
    for t in (0, 4, 7):
        changed = tokens.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 23
        assert_close(model(changed)[:, : t + 1], model(tokens)[:, : t + 1], rtol=0, atol=0)
    # gradients agree: logits at position 3 do not depend on embeddings after it
    emb = model.embed(tokens).detach().requires_grad_()
    model.forward_embeddings(emb)[:, 3].sum().backward()
    assert torch.all(emb.grad[:, 4:] == 0) and torch.any(emb.grad[:, :4] != 0)
    assert_close(model.forward_embeddings(model.embed(tokens)), model(tokens))


def test_causal_lm_with_batchnorm_leaks_the_future_in_training_mode():
    # the positive control: this is what the causality test above would catch
    model = CausalLM(23, d_model=D, nhead=H, num_layers=1, norm="batchnorm", placement="pre").train()
    tokens = torch.randint(0, 23, (3, 9))
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 23
    assert not torch.allclose(model(changed)[:, :8], model(tokens)[:, :8])


def test_causal_lm_shapes_padding_and_default_width():
    model = CausalLM(17, d_model=D, nhead=H, num_layers=1)
    assert model.decoder.layers[0].ff.linear1.out_features == 4 * D and model.decoder.norm is not None
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    logits = model(torch.randint(0, 17, (2, 6)), key_padding_mask=kpm)
    assert logits.shape == (2, 6, 17) and torch.isfinite(logits).all()


@pytest.mark.interpret
def test_encoder_layer_on_triton_kernels_matches_torch_backend():
    # the one case through the Triton kernels (the interpreter on CPU): fused AddNorm and LayerNorm, pre-LN
    layer = EncoderLayer(16, 2, 16, dropout=0.0, placement="pre").eval()
    x = torch.randn(1, 4, 16)
    results = []
    for backend in ("torch", "triton"):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with tokennorm.using_backend(backend):
            y = layer(xi)
            y.backward(torch.ones_like(y))
        results.append((y, xi.grad, layer.norm2.weight.grad.clone()))
    for ref, got in zip(*results):
        assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "batchnorm", "none"])
def test_layers_name_a_wrong_input_width_whatever_runs_first(norm, placement):
    # in pre-LN the norm runs before attention; the error must still name the layer's argument
    enc = EncoderLayer(D, H, FF, norm=norm, placement=placement)
    with pytest.raises(ValueError, match=r"EncoderLayer expects x of shape \[batch, seq_len, 32\].*\[2, 5, 16\]"):
        enc(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"x of shape \[batch, seq_len, 32\].*got x of shape \[5, 32\]"):
        enc(torch.randn(5, D))
    dec = DecoderLayer(D, H, FF, norm=norm, placement=placement)
    with pytest.raises(ValueError, match=r"DecoderLayer expects memory of shape .*got memory of shape \[2, 3, 16\]"):
        dec(torch.randn(2, 5, D), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"memory must have the batch size of x.*\[2, 5, 32\].*\[3, 3, 32\]"):
        dec(torch.randn(2, 5, D), torch.randn(3, 3, D))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \[2, 5\]"):
        dec(torch.randn(2, 5, D), torch.randn(2, 3, D), tgt_key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))


def _load_bench_block():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_block.py"
    spec = importlib.util.spec_from_file_location("bench_block", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_block_tiny_cpu_run_matches_torch_and_writes_json(tmp_path, capsys):
    bench = _load_bench_block()
    out = tmp_path / "block.json"
    rc = bench.main(
        ["--device", "cpu", "--tiny", "--modes", "eager", "--d-models", "64", "--rep-ms", "1", "--json", str(out)]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["norm"], r["impl"]) for r in rows} == {
        (n, i) for n in ("layernorm", "rmsnorm") for i in ("torch", "tokennorm")
    }
    for r in rows:
        assert r["error"] is None and r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        # fp32 on the CPU: the same math in the same order as torch's block (torch backend), so ~0
        assert r["out_err"] < 1e-6 and r["dx_err"] < 1e-6
    assert data["environment"]["torch"] == torch.__version__
    assert "speedup" in capsys.readouterr().out


def test_bench_block_reports_failures_without_crashing(tmp_path, monkeypatch):
    bench = _load_bench_block()
    real = bench.build_pair

    def failing_for_128(d_model, *args):
        if d_model == 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(d_model, *args)

    monkeypatch.setattr(bench, "build_pair", failing_for_128)
    out = tmp_path / "block.json"
    rc = bench.main(
        ["--device", "cpu", "--tiny", "--modes", "eager", "--norms", "rmsnorm", "--rep-ms", "1", "--json", str(out)]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["d_model"] for r in rows] == [64, 64, 128, 128]
    assert all(r["error"] is None for r in rows[:2])
    assert all("OutOfMemoryError" in r["error"] and r["median_ms"] is None for r in rows[2:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_block_without_cuda_explains_and_exits_0(capsys):
    assert _load_bench_block().main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
