"""The demo's data: *King Lear* (shipped in ``tokennorm/data``) as character-level tokens, and random windows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor

from tokennorm.tools.demo.presets import CLASS_SIGNALS

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


# Per-sequence classes derived from the text, for class-conditional runs (``--classes``):
#   direction: 0 = the text as written, 1 = read backwards (characters reversed). A model that is not told must
#     infer the direction from the characters it has seen so far, which it cannot at a sequence's start.
#   speaker: which of the eight characters with the most lines speaks (Lear, Edgar, Kent, Gloucester, Edmund, the
#     Fool, Goneril, Regan), each speaker's speeches joined; the first 90% of each speaker's text trains.
SPEAKERS = 8
_SPEECH = re.compile(r"\n\n([A-Z][A-Za-z]*(?: [A-Z][a-z]*)?)\.\n(.*?)(?=\n\n)", re.S)


@dataclass
class ClassedData:
    """One token stream per class, each split into a leading train part and a trailing validation part."""

    classes: list[str]
    train: list[Tensor]
    val: list[Tensor]

    @classmethod
    def from_text(cls, text: str, signal: str, data: CharData, val_fraction: float = 0.1) -> "ClassedData":
        if signal not in CLASS_SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(CLASS_SIGNALS)}, but got {signal!r}")
        if signal == "direction":
            return cls(["forwards", "backwards"], [data.train, data.train.flip(0)], [data.val, data.val.flip(0)])
        speeches: dict[str, list[str]] = {}
        for match in _SPEECH.finditer(text):
            speeches.setdefault(match.group(1), []).append(match.group(2) + "\n\n")
        joined = {name: "".join(parts) for name, parts in speeches.items()}
        names = sorted(joined, key=lambda name: len(joined[name]), reverse=True)[:SPEAKERS]
        index = {ch: i for i, ch in enumerate(data.vocab)}
        streams = [torch.tensor([index[ch] for ch in joined[name]], dtype=torch.long) for name in names]
        splits = [int(len(s) * (1.0 - val_fraction)) for s in streams]
        return cls(names, [s[:k] for s, k in zip(streams, splits)], [s[k:] for s, k in zip(streams, splits)])


def sample_classed_batch(
    streams: list[Tensor], batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``batch_size`` windows, each from a class drawn uniformly: inputs and next-character targets ``[B, N]``
    and the classes ``[B]`` (int64)."""
    lengths = torch.tensor([len(s) for s in streams])
    if int(lengths.min()) <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len + 1} characters in every class's split")
    classes = torch.randint(0, len(streams), (batch_size,), generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    starts = (torch.rand(batch_size, generator=generator) * (lengths[classes] - seq_len - 1)).long()
    chunk = torch.cat(streams)[(offsets[classes] + starts)[:, None] + torch.arange(seq_len + 1)]
    return chunk[:, :-1], chunk[:, 1:], classes
