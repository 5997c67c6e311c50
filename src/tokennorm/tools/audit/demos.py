"""The built-in demo of ``tokennorm audit --demo``: one causal decoder with three norms, and its inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a demo is built, so the command line can list the demos without it
    from torch import Tensor, nn

DEMOS = ("layernorm", "rmsnorm", "batchnorm")


def demo_model(norm: str, *, vocab_size: int = 64, d_model: int = 64, num_layers: int = 2, seed: int = 0) -> nn.Module:
    """The built-in demo: one causal decoder, ``tokennorm.transformer.CausalLM`` (pre-norm, dropout 0.1).

    Its norms are ``norm``: ``"layernorm"``, ``"rmsnorm"`` or ``"batchnorm"``; the other weights are the same
    for every norm (same seed).
    """
    if norm not in DEMOS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, DEMOS))}, but got norm={norm!r}")
    import torch

    from tokennorm.transformer import CausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CausalLM(
            vocab_size, d_model=d_model, nhead=4, num_layers=num_layers, dropout=0.1, norm=norm, placement="pre"
        )


def demo_inputs(
    batch: int = 2, length: int = 16, pad: int = 4, vocab_size: int = 64, pad_id: int = 0, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Random token ids [batch, length] and a key-padding mask whose last item starts with ``pad`` PAD tokens.

    Left padding, as in batched generation: with right padding a causal model could not see the PAD tokens
    anyway, so the padding check would test causality again instead of the key-padding mask.
    """
    if not 0 <= pad < length:
        raise ValueError(f"pad must be in [0, length={length}), but got pad={pad}")
    if batch < 1 or vocab_size < 2 or not 0 <= pad_id < vocab_size:
        raise ValueError(
            f"need batch ≥ 1, vocab_size ≥ 2 and 0 ≤ pad_id < vocab_size, but got batch={batch}, "
            f"vocab_size={vocab_size}, pad_id={pad_id}"
        )
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size - 1, (batch, length), generator=gen)
    tokens = tokens + (tokens >= pad_id).long()  # every real token differs from pad_id
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if pad:
        mask[-1, :pad] = True
    return tokens.masked_fill(mask, pad_id), mask
