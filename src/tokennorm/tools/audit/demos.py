"""The built-in demos of ``tokennorm audit --demo``: one causal decoder with five norms, and its inputs.

``layernorm``, ``rmsnorm``, ``batchnorm`` and ``dyt`` are that norm in every block; ``adaln`` is the LayerNorm
model made class-conditional (``CausalLM(num_classes=...)``: AdaLN-Zero blocks conditioned on a class embedding
per sequence), audited with each sequence given its own class (:func:`demo_condition`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # torch is imported when a demo is built, so the command line can list the demos without it
    from torch import Tensor, nn

DEMOS = ("layernorm", "rmsnorm", "batchnorm", "dyt", "adaln")
DEMO_CLASSES = 4  # classes of the adaln demo


def demo_model(norm: str, *, vocab_size: int = 64, d_model: int = 64, num_layers: int = 2, seed: int = 0) -> nn.Module:
    """The built-in demo: one causal decoder, ``tokennorm.transformer.CausalLM`` (pre-norm, dropout 0.1).

    Its norms are ``norm``: ``"layernorm"``, ``"rmsnorm"``, ``"batchnorm"`` or ``"dyt"``; the other weights are
    the same for every norm (same seed). ``"adaln"``: LayerNorm, class-conditional with :data:`DEMO_CLASSES`
    classes; its AdaLN-Zero projections are drawn at random (std 0.1) instead of zero, as after training: at
    AdaLN-Zero's zero initialisation every block is the identity and ignores the condition, so there would be
    no dependence on it to measure.
    """
    if norm not in DEMOS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, DEMOS))}, but got norm={norm!r}")
    import torch

    from tokennorm.transformer import CausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalLM(
            vocab_size,
            d_model=d_model,
            nhead=4,
            num_layers=num_layers,
            dropout=0.1,
            norm="layernorm" if norm == "adaln" else norm,
            placement="pre",
            num_classes=DEMO_CLASSES if norm == "adaln" else None,
        )
        if norm == "adaln":
            with torch.no_grad():
                for layer in model.decoder.layers:
                    layer.adaln.linear.weight.normal_(0.0, 0.1)
                    layer.adaln.linear.bias.normal_(0.0, 0.1)
        return model


def demo_condition(name: str, batch: int = 2) -> Optional[Tensor]:
    """The condition the demo ``name`` is audited with: for ``"adaln"``, a different class per sequence
    (``arange(batch) % DEMO_CLASSES``, int64 [batch], passed as ``classes=``); None for the others."""
    if name != "adaln":
        return None
    import torch

    return torch.arange(batch) % DEMO_CLASSES


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
