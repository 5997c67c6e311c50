"""The demo's data: *King Lear* (shipped in ``tokennorm/data``) as character-level tokens, and random windows."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor

CORPUS = "king_lear.txt"


def load_corpus() -> str:
    """The bundled text (``tokennorm/data/king_lear.txt``, public domain; see the README beside it)."""
    return resources.files("tokennorm").joinpath("data", CORPUS).read_text(encoding="utf-8")


@dataclass
class CharData:
    """Character-level tokens of a text, split into a leading train part and a trailing validation part."""

    vocab: list[str]
    train: Tensor
    val: Tensor

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> "CharData":
        vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        split = int(len(ids) * (1.0 - val_fraction))
        return cls(vocab, ids[:split], ids[split:])

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())


def sample_batch(data: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: inputs ``[B, N]`` and next-character targets ``[B, N]``."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len + 1} characters, but the split has {len(data)}")
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
    window = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[window]
    return chunk[:, :-1], chunk[:, 1:]
