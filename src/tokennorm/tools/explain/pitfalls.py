"""The three classic LayerNorm mistakes, as runnable functions, and what each one costs.

Right, per token (row) of C features, as ``torch.nn.LayerNorm`` computes it::

    μ = Σx / C,   σ² = Σ(x − μ)² / C,   y = (x − μ) / sqrt(σ² + ε) · γ + β

The mistakes, each a drop-in with ``F.layer_norm``'s signature so it can stand in for the real op:

* :func:`layer_norm_unbiased_std`: σ² = Σ(x − μ)² / (C − 1), what ``torch.std``/``torch.var`` give by default.
* :func:`layer_norm_eps_outside_sqrt`: y = (x − μ) / (σ + ε), the formula printed in some articles.
* :func:`norm_across_tokens`: μ and σ² per feature over all tokens of the batch (BatchNorm-style), so a
  token's output depends on every other token in the batch.

:func:`measure` runs one mistake and the right formula on the same float64 input and reports how far apart
they are; ``python3 -m tokennorm.pitfalls`` prints the table in docs/pitfalls.md from :data:`STATED_INPUTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from tokennorm import reference

__all__ = [
    "layer_norm_unbiased_std",
    "layer_norm_eps_outside_sqrt",
    "norm_across_tokens",
    "Pitfall",
    "PITFALLS",
    "StatedInput",
    "STATED_INPUTS",
    "Measurement",
    "other_token_change",
    "measure",
    "measure_all",
    "markdown_table",
    "relative",
]

NormFn = Callable[..., Tensor]  # (input, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor


def _feature_dims(x: Tensor, normalized_shape: Sequence[int]) -> tuple[int, ...]:
    """The trailing dims ``normalized_shape`` names; ValueError when they are not x's trailing dims."""
    k = len(normalized_shape)
    if k == 0 or x.dim() < k or tuple(x.shape[x.dim() - k :]) != tuple(normalized_shape):
        raise ValueError(
            f"normalized_shape={list(normalized_shape)} must be the trailing dims of the input, "
            f"but got input of size {list(x.shape)}"
        )
    return tuple(range(x.dim() - k, x.dim()))


def _affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def layer_norm_unbiased_std(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """WRONG on purpose: LayerNorm with the unbiased variance Σ(x − μ)²/(C − 1) (``torch.var``'s default).

    Shrinks every x̂ by sqrt((C − 1)/C) ≈ 1 − 1/(2C); NaN for C = 1.
    """
    dims = _feature_dims(input, normalized_shape)
    var, mean = torch.var_mean(input, dim=dims, correction=1, keepdim=True)
    return _affine((input - mean) / torch.sqrt(var + eps), weight, bias)


def layer_norm_eps_outside_sqrt(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """WRONG on purpose: LayerNorm dividing by σ + ε instead of sqrt(σ² + ε).

    Off by a factor sqrt(σ² + ε)/(σ + ε) ≈ 1 + ε/(2σ²) − ε/σ: negligible when σ² ≫ ε, large when σ² ≲ ε.
    """
    dims = _feature_dims(input, normalized_shape)
    var, mean = torch.var_mean(input, dim=dims, correction=0, keepdim=True)
    return _affine((input - mean) / (torch.sqrt(var) + eps), weight, bias)


def norm_across_tokens(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """WRONG on purpose for a Transformer: BatchNorm-style statistics, one μ and σ² per feature over all tokens.

    For x of shape [B, N, C] and normalized_shape (C,), μ and σ² are taken over the B·N tokens of each feature
    (what ``nn.BatchNorm1d`` does in training mode, channels last), so every token's output depends on every
    other token in the batch, padding and future tokens included.
    """
    feature_dims = _feature_dims(input, normalized_shape)
    token_dims = tuple(d for d in range(input.dim()) if d not in feature_dims)
    var, mean = torch.var_mean(input, dim=token_dims, correction=0, keepdim=True)
    return _affine((input - mean) / torch.sqrt(var + eps), weight, bias)


def _layer_norm(input: Tensor, normalized_shape: Sequence[int], weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    return reference.layer_norm(input, normalized_shape, weight, bias, eps)


@dataclass(frozen=True)
class Pitfall:
    """One mistake: a short name, what it is, the right and the wrong formula, and the wrong function."""

    name: str
    description: str
    right: str
    wrong: str
    function: NormFn


PITFALLS: tuple[Pitfall, ...] = (
    Pitfall(
        "unbiased_std",
        "unbiased (n − 1) variance instead of the biased one",
        "σ² = Σ(x − μ)² / C",
        "σ² = Σ(x − μ)² / (C − 1)",
        layer_norm_unbiased_std,
    ),
    Pitfall(
        "eps_outside_sqrt",
        "ε added to σ instead of inside the square root",
        "(x − μ) / sqrt(σ² + ε)",
        "(x − μ) / (σ + ε)",
        layer_norm_eps_outside_sqrt,
    ),
    Pitfall(
        "across_tokens",
        "statistics per feature across tokens (BatchNorm-style) instead of per token",
        "μ, σ² over the C features of each token",
        "μ, σ² over all B·N tokens of each feature",
        norm_across_tokens,
    ),
)


@dataclass(frozen=True)
class StatedInput:
    """A reproducible float64 input: ``scale · randn(shape)`` from a CPU generator seeded with ``seed``."""

    shape: tuple[int, ...]
    scale: float = 1.0
    seed: int = 0

    @property
    def description(self) -> str:
        scale = "" if self.scale == 1.0 else f"{self.scale:g} · "
        return f"{scale}randn{list(self.shape)}, seed {self.seed}"

    def tensor(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return self.scale * torch.randn(self.shape, generator=g, dtype=torch.float64)


# The inputs docs/pitfalls.md reports: a hand-sized [batch 2, 3 tokens, C = 4] example, a realistic width, and the
# same width with small-variance tokens, σ² ≈ 1e-4 = 10ε and σ² ≈ 1e-6 = ε/10, where ε's placement matters.
STATED_INPUTS: tuple[StatedInput, ...] = (
    StatedInput((2, 3, 4)),
    StatedInput((2, 3, 768)),
    StatedInput((2, 3, 768), scale=0.01),
    StatedInput((2, 3, 768), scale=0.001),
)


def relative(difference: float, scale: float) -> float:
    """``difference / scale`` where the right output's scale may be 0 (one feature, or an all-zero input, makes
    LayerNorm's output exactly 0): then 0 when the outputs agree and +inf when they do not; NaN stays NaN."""
    if difference != difference or scale > 0:
        return difference / scale if scale > 0 else difference
    return 0.0 if difference == 0 else math.inf


@dataclass(frozen=True)
class Measurement:
    """How far a pitfall's output is from LayerNorm's on one input (float64, no affine, eps as stated).

    ``relative_difference`` is max|wrong − right| / max|right| (:func:`relative`: 0 or ∞ when max|right| = 0).
    ``other_token_change`` is the largest change in the *other* tokens' outputs when 10 is added to every feature
    of the first token: 0 for a per-token norm.
    """

    name: str
    description: str
    input_description: str
    max_abs_difference: float
    relative_difference: float
    other_token_change: float


def other_token_change(norm: NormFn, x: Tensor, normalized_shape: Sequence[int], eps: float = 1e-5) -> float:
    """Largest change in tokens 1.. of ``norm``'s output when 10 is added to every feature of token 0.

    Tokens are the rows of x viewed as [tokens, features]. Exactly 0 for any norm whose statistics are per token.
    """
    n_features = math.prod(normalized_shape)
    changed = x.clone()
    changed.view(-1, n_features)[0] += 10.0
    before = norm(x, normalized_shape, eps=eps).reshape(-1, n_features)[1:]
    after = norm(changed, normalized_shape, eps=eps).reshape(-1, n_features)[1:]
    return (after - before).abs().max().item() if before.numel() else 0.0


def measure(
    pitfall: Pitfall,
    x: Tensor,
    normalized_shape: Optional[Sequence[int]] = None,
    eps: float = 1e-5,
    input_description: str = "",
) -> Measurement:
    """Run ``pitfall`` and the right LayerNorm on x (upcast to float64) and measure the difference.

    ``normalized_shape`` defaults to the last dim of x.
    """
    x = x.to(torch.float64)
    shape = tuple(normalized_shape) if normalized_shape is not None else tuple(x.shape[-1:])
    right = _layer_norm(x, shape, eps=eps)
    diff = (pitfall.function(x, shape, eps=eps) - right).abs().max().item()
    return Measurement(
        name=pitfall.name,
        description=pitfall.description,
        input_description=input_description or f"{list(x.shape)} over {list(shape)}",
        max_abs_difference=diff,
        relative_difference=relative(diff, right.abs().max().item()),
        other_token_change=other_token_change(pitfall.function, x, shape, eps),
    )


def measure_all(inputs: Sequence[StatedInput] = STATED_INPUTS, eps: float = 1e-5) -> list[Measurement]:
    """Every pitfall on every stated input, normalizing over the last dim with ``eps``."""
    return [
        measure(p, stated.tensor(), eps=eps, input_description=stated.description)
        for p in PITFALLS
        for stated in inputs
    ]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def markdown_table(measurements: Sequence[Measurement]) -> str:
    """The measurements as the Markdown table docs/pitfalls.md shows (3 significant digits)."""
    lines = [
        "| pitfall | input | max abs difference | relative difference | change in other tokens |",
        "|---|---|---|---|---|",
    ]
    for m in measurements:
        lines.append(
            f"| `{m.name}` | {m.input_description} | {_fmt(m.max_abs_difference)} | "
            f"{_fmt(m.relative_difference)} | {_fmt(m.other_token_change)} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Print the docs/pitfalls.md table (eps = 1e-5, torch.nn.LayerNorm's default)."""
    print(markdown_table(measure_all()))


if __name__ == "__main__":
    main()
