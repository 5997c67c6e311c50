"""The demo's presets: each a question the articles raise, with a model, data and schedule small enough to show
the answer on two CPU cores in three minutes or less (measured outcomes and times: docs/demo.md).

Settings a preset does not give come from :data:`BASE`; options given on the command line override both.
No torch here: ``tokennorm demo --help`` lists the presets without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The training settings every run has, and their values unless a preset or an option says otherwise.
BASE: dict[str, Any] = {
    "steps": 300,
    "d_model": 64,
    "layers": 2,
    "heads": 4,
    "seq_len": 64,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup": None,
    "dropout": 0.0,
    "eval_interval": 50,
    "eval_batches": 4,
    "classes": None,
}
# the per-sequence classes a class-conditional run can train on (tokennorm.tools.demo.data builds them)
CLASS_SIGNALS = ("direction", "speaker")


@dataclass(frozen=True)
class Preset:
    """A question, the configurations that answer it (``NORM-PLACEMENT``), the settings they train with, the
    plot that shows the answer (``curves``: loss per step; ``leak``: training-mode against eval-mode loss;
    ``position``: loss per step and, beside it, per position in the sequence) and a note printed under the
    results on how to read them."""

    name: str
    question: str
    configs: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    plot: str = "curves"
    note: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "depth",
            "Does the norm's placement matter in a deep stack? 8 layers at a high learning rate",
            ("layernorm-post", "layernorm-pre", "dyt-pre", "none-pre"),
            {"layers": 8, "lr": 1e-2},
            note="post-LN normalizes the residual stream after every layer, so gradients to the early layers pass "
            "through 16 norms and the run stalls at this learning rate; pre-LN keeps an identity path from "
            "the loss to every layer and trains; without any norm the residual stream grows until the loss "
            "diverges. DyT (γ·tanh(α·x) + β: no statistics at all) in pre-LN's places keeps the stack from "
            "diverging, but at this learning rate trains slower than pre-LN.",
        ),
        Preset(
            "conditioning",
            "AdaLN-Zero: does a model told each sequence's class (the text read forwards or backwards) predict better "
            "than the same model given one class for all?",
            ("layernorm-pre+adaln-null", "layernorm-pre+adaln"),
            {"classes": "direction", "seq_len": 32, "steps": 1500, "eval_interval": 100, "eval_batches": 8},
            plot="position",
            note="half the sequences are the text read backwards. The model told the direction (AdaLN-Zero "
            "modulation from a class embedding) knows it from the first character; the same model given one "
            "class for all must read it off the characters so far, so it pays at the start of every sequence "
            "(right panel) and a little everywhere. With --classes speaker (which character speaks) the class "
            "does not help at this size: see docs/demo.md.",
        ),
        Preset(
            "batchnorm",
            "BatchNorm in a causal LM: its training loss reads the future",
            ("layernorm-post", "batchnorm-post"),
            {"batch_size": 1, "seq_len": 16, "steps": 2000, "eval_interval": 100, "eval_batches": 32},
            plot="leak",
            note="one sequence of 16 characters per batch, so BatchNorm's training-mode statistics are a summary of "
            "that sequence, future characters included; the model learns to read the next character from "
            "them. Its training-mode loss falls below anything LayerNorm reaches, and in eval mode (running "
            "statistics: causal, as at inference) the same model is worse than LayerNorm. LayerNorm's two "
            "curves coincide: nothing to read.",
        ),
        Preset(
            "detach",
            "Article 002: do LayerNorm's gradients through μ and σ matter more than the normalization itself?",
            ("layernorm-post", "layernorm-detached-post", "none-post"),
            {"layers": 4},
            note="layernorm-detached has LayerNorm's forward but passes no gradient through μ and σ (DetachNorm "
            "in Xu et al., 2019). Same forward, different backward: it ends far above LayerNorm, and above no "
            "norm at all, so normalizing without the gradient through the statistics is worse than not "
            "normalizing, as article 002 claims. At this depth no norm trains well; the depth preset shows "
            "where it does not.",
        ),
    )
}
DEFAULT_PRESET = "depth"
