"""Queries whose keys are all masked, against torch (issue 14, item 7).

torch answers by code path (tokennorm/transformer/attention.py): NaN from a softmax over no keys on its inference
fast path (eval mode, no gradient needed, self-attention, even nhead, biases, bool masks for
nn.MultiheadAttention; masks of either dtype for nn.TransformerEncoderLayer) and with need_weights=True;
zero attention weights (output = out_proj.bias) from scaled_dot_product_attention everywhere else. Each test
compares with torch run the same way, and checks that torch still does what the docstrings say.
"""

import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from tokennorm.transformer import DecoderLayer, Encoder, EncoderLayer, MultiHeadAttention, _convert

D, FF = 16, 32
# Batch item 0 pads its first two keys: with a causal mask its queries 0 and 1 see no key at all.
PADDING = torch.tensor([[True, True, False, False, False], [False, False, False, False, True]])
CAUSAL = torch.ones(5, 5, dtype=torch.bool).triu(1)
EMPTY_ROWS = torch.tensor([[True, True, False, False, False], [False] * 5])  # [B, N]: queries with no key


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _masks(dtype: str):
    if dtype == "bool":
        return PADDING, CAUSAL
    as_float = lambda m: torch.zeros(m.shape).masked_fill(m, float("-inf"))  # noqa: E731
    return as_float(PADDING), as_float(CAUSAL)


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """NaN in the same places, equal values elsewhere."""
    assert torch.equal(ours.isnan(), theirs.isnan()), (ours.isnan().any(-1), theirs.isnan().any(-1))
    assert_close(ours.nan_to_num(), theirs.nan_to_num())


def _nan_rows(out: torch.Tensor) -> torch.Tensor:
    return out.isnan().any(dim=-1)  # [B, N]


def _attention_pair(nhead: int = 2, bias: bool = True):
    theirs = nn.MultiheadAttention(D, nhead, batch_first=True, bias=bias)
    if bias:
        with torch.no_grad():
            theirs.in_proj_bias.normal_()
            theirs.out_proj.bias.normal_()
    ours = MultiHeadAttention(D, nhead, bias=bias)
    _convert.copy_attention(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize(
    "training, grad, need_weights, mask_dtype, attention",
    itertools.product([False, True], [False, True], [False, True], ["bool", "float"], ["self", "cross"]),
)
def test_attention_matches_torch(training, grad, need_weights, mask_dtype, attention):
    ours, theirs = _attention_pair()
    ours.train(training), theirs.train(training)
    x = torch.randn(2, 5, D)
    kv = x if attention == "self" else x.clone()  # torch's fast path needs query is key is value
    kpm, am = _masks(mask_dtype)
    with torch.set_grad_enabled(grad):
        t_out, t_weights = theirs(
            x, kv, kv, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights, average_attn_weights=False
        )
        out = ours(x, kv, kv, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)
    if need_weights:
        out, weights = out
        _assert_same(weights, t_weights)
    _assert_same(out, t_out)
    fast_path = not training and not grad and mask_dtype == "bool" and attention == "self"
    expected = EMPTY_ROWS if (need_weights or fast_path) else torch.zeros_like(EMPTY_ROWS)
    assert torch.equal(_nan_rows(t_out), expected), "torch no longer does what attention.py describes"
    if not expected.any():  # SDPA: the empty queries get zero weights, so out_proj's bias alone
        assert_close(out[EMPTY_ROWS], ours.out_proj.bias.detach().expand(2, D))


@pytest.mark.parametrize("nhead, bias", [(1, True), (2, False)])
def test_attention_without_torch_fast_path_gives_zero_weights_like_torch(nhead, bias):
    ours, theirs = _attention_pair(nhead, bias)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        t_out = theirs(x, x, x, key_padding_mask=PADDING, attn_mask=CAUSAL, need_weights=False)[0]
        out = ours(x, key_padding_mask=PADDING, is_causal=True)
    _assert_same(out, t_out)
    assert not out.isnan().any()


def test_attention_with_torch_fast_path_switched_off():
    ours, theirs = _attention_pair()
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, D)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            t_out = theirs(x, x, x, key_padding_mask=PADDING, attn_mask=CAUSAL, need_weights=False)[0]
            out = ours(x, key_padding_mask=PADDING, is_causal=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    _assert_same(out, t_out)
    assert not out.isnan().any()


def test_attention_gradients_with_empty_queries_match_torch_in_training():
    ours, theirs = _attention_pair()
    x = torch.randn(2, 5, D)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ours(x_ours, key_padding_mask=PADDING, is_causal=True)
    t_out = theirs(x_theirs, x_theirs, x_theirs, key_padding_mask=PADDING, attn_mask=CAUSAL, need_weights=False)[0]
    dy = torch.randn_like(out)
    out.backward(dy)
    t_out.backward(dy)
    assert x_ours.grad.isfinite().all()
    assert_close(x_ours.grad, x_theirs.grad)
    assert_close(ours.out_proj.bias.grad, theirs.out_proj.bias.grad)


def _encoder_pair(norm_first: bool, nhead: int = 2, bias: bool = True):
    theirs = nn.TransformerEncoderLayer(D, nhead, FF, dropout=0.0, batch_first=True, norm_first=norm_first, bias=bias)
    return EncoderLayer.from_torch(theirs), theirs


@pytest.mark.parametrize(
    "norm_first, training, grad, mask_dtype",
    itertools.product([False, True], [False, True], [False, True], ["bool", "float"]),
)
def test_encoder_layer_from_torch_matches_torch(norm_first, training, grad, mask_dtype):
    ours, theirs = _encoder_pair(norm_first)
    ours.train(training), theirs.train(training)
    x = torch.randn(2, 5, D)
    kpm, am = _masks(mask_dtype)
    x_ours, x_theirs = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = ours(x_ours, key_padding_mask=kpm, attn_mask=am, is_causal=True)
        t_out = theirs(x_theirs, src_key_padding_mask=kpm, src_mask=am, is_causal=True)
    _assert_same(out, t_out)
    expected = EMPTY_ROWS if not (training or grad) else torch.zeros_like(EMPTY_ROWS)
    assert torch.equal(_nan_rows(t_out), expected), "torch no longer does what attention.py describes"
    if grad:
        dy = torch.randn_like(out)
        out.backward(dy)
        t_out.backward(dy)
        assert_close(x_ours.grad, x_theirs.grad)


@pytest.mark.parametrize("change", ["odd nhead", "no bias", "hook", "different eps", "fast path off"])
def test_encoder_layer_off_torch_fast_path_matches_torch(change):
    ours, theirs = _encoder_pair(False, nhead=1 if change == "odd nhead" else 2, bias=change != "no bias")
    if change == "different eps":
        theirs.norm2.eps = 1e-3
        ours = EncoderLayer.from_torch(theirs)
        assert ours.norm2.eps == 1e-3 and ours.norm1.eps == 1e-5
    if change == "hook":
        theirs.linear1.register_forward_hook(lambda *args: None)
        ours.ff.linear1.register_forward_hook(lambda *args: None)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, D)
    torch.backends.mha.set_fastpath_enabled(change != "fast path off")
    try:
        with torch.no_grad():
            out = ours(x, key_padding_mask=PADDING, is_causal=True)
            t_out = theirs(x, src_key_padding_mask=PADDING, src_mask=CAUSAL, is_causal=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    _assert_same(out, t_out)
    assert not out.isnan().any()


@pytest.mark.parametrize("grad", [False, True])
def test_decoder_layer_from_torch_matches_torch(grad):
    theirs = nn.TransformerDecoderLayer(D, 2, FF, dropout=0.0, batch_first=True).eval()
    ours = DecoderLayer.from_torch(theirs)
    x, memory = torch.randn(2, 5, D), torch.randn(2, 3, D)
    all_memory_padded = torch.tensor([[True] * 3, [False] * 3])
    with torch.set_grad_enabled(grad):
        # empty self-attention queries: torch's attention fast path (eval, no grad) gives NaN
        out = ours(x, memory, tgt_key_padding_mask=PADDING, causal=True)
        t_out = theirs(x, memory, tgt_mask=CAUSAL, tgt_key_padding_mask=PADDING)
        _assert_same(out, t_out)
        assert torch.equal(_nan_rows(t_out), EMPTY_ROWS if not grad else torch.zeros_like(EMPTY_ROWS))
        # empty cross-attention queries: cross-attention never takes torch's fast path
        out = ours(x, memory, memory_key_padding_mask=all_memory_padded, causal=False)
        t_out = theirs(x, memory, memory_key_padding_mask=all_memory_padded)
        _assert_same(out, t_out)
        assert not t_out.isnan().any()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_encoder_stack_against_torch_nested_tensor_path():
    """torch.nn.TransformerEncoder's default (enable_nested_tensor=True) packs right-padded sequences into a
    nested tensor in eval mode without gradients: its padding positions come out 0 (a sequence of padding only
    included). tokennorm's Encoder computes them like torch's other paths; every real token is equal."""
    layer = nn.TransformerEncoderLayer(D, 2, FF, dropout=0.0, batch_first=True)
    nested = nn.TransformerEncoder(layer, 2).eval()
    padded = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ours = Encoder(EncoderLayer.from_torch(layer), 2).eval()
    x = torch.randn(3, 5, D)
    right_padding = torch.tensor([[False, False, False, True, True], [False] * 5, [True] * 5])
    with torch.no_grad():
        out, t_nested, t_padded = (
            m(x, **kw)
            for m, kw in (
                (ours, {"key_padding_mask": right_padding}),
                (nested, {"src_key_padding_mask": right_padding}),
                (padded, {"src_key_padding_mask": right_padding}),
            )
        )
    real = ~right_padding
    assert_close(out[real], t_nested[real])
    assert torch.all(t_nested[right_padding] == 0)  # torch's nested path: padding positions are 0
    _assert_same(out, t_padded)  # as torch without nested tensors: the all-padding sequence is NaN
    assert out[2].isnan().all() and out[0, 3:].isfinite().all()


@pytest.mark.gpu
def test_cuda_matches_torch_on_every_path():
    """The same comparisons on a GPU, where torch's fast path and SDPA run CUDA kernels (torch's masked softmax
    gives NaN there too; SDPA's flash / memory-efficient kernels give zero weights)."""
    x, kpm, am = torch.randn(2, 5, D, device="cuda"), PADDING.cuda(), CAUSAL.cuda()
    for training, grad, need_weights in itertools.product([False, True], [False, True], [False, True]):
        ours, theirs = (m.cuda().train(training) for m in _attention_pair())
        with torch.set_grad_enabled(grad):
            t_out = theirs(x, x, x, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)[0]
            out = ours(x, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)
        _assert_same(out[0] if need_weights else out, t_out)
    for norm_first, training, grad in itertools.product([False, True], [False, True], [False, True]):
        ours, theirs = (m.cuda().train(training) for m in _encoder_pair(norm_first))
        with torch.set_grad_enabled(grad):
            out = ours(x, key_padding_mask=kpm, attn_mask=am, is_causal=True)
            t_out = theirs(x, src_key_padding_mask=kpm, src_mask=am, is_causal=True)
        _assert_same(out, t_out)
