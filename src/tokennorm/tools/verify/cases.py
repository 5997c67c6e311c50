"""What ``tokennorm verify`` checks: the ops (through tokennorm's public functions) and the input shapes."""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("forward", "backward")

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; RMSNorm runs with eps=None (torch's default)


@dataclass(frozen=True)
class Op:
    """One public op configuration: a plain norm, or Add & Norm (with a residual) returning y, or (y, h) if pre;
    ``family`` "norm" for those, or one of issue 18's ops (checked by :mod:`~tokennorm.tools.verify.extended`)."""

    name: str
    norm: str  # "layernorm" | "rmsnorm" | "dyt"
    add: bool = False
    prenorm: bool = False
    family: str = "norm"  # "norm" | "ada_norm" | "dyt" | "channels_first"


# add_norm(ln|rms, post|pre): norm="layernorm"|"rmsnorm", prenorm=False|True, always with a residual.
OPS: tuple[Op, ...] = (
    Op("layer_norm", "layernorm"),
    Op("rms_norm", "rmsnorm"),
    Op("add_norm(ln, post)", "layernorm", add=True),
    Op("add_norm(ln, pre)", "layernorm", add=True, prenorm=True),
    Op("add_norm(rms, post)", "rmsnorm", add=True),
    Op("add_norm(rms, pre)", "rmsnorm", add=True, prenorm=True),
    # issue 18: the AdaLN-Zero step (gate, residual, [B, C] shift/scale, prenorm), DyT, Add & DyT, channels first
    Op("ada_norm(ln, pre)", "layernorm", add=True, prenorm=True, family="ada_norm"),
    Op("ada_norm(rms, pre)", "rmsnorm", add=True, prenorm=True, family="ada_norm"),
    Op("dyt", "dyt", family="dyt"),
    Op("add_dyt(pre)", "dyt", add=True, prenorm=True, family="dyt"),
    Op("channels_first_layer_norm", "layernorm", family="channels_first"),
)


@dataclass(frozen=True)
class Case:
    """An input shape, how many trailing dims are normalized, and the tokens' scale σ."""

    shape: tuple[int, ...]
    normalized_ndim: int = 1
    scale: float = 1.0

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.normalized_ndim :]

    @property
    def label(self) -> str:
        k = len(self.shape) - self.normalized_ndim
        batch = "×".join(map(str, self.shape[:k]))
        normalized = "×".join(map(str, self.normalized_shape))
        # 2×3×(8×64): the parenthesised dims are normalized together, when there is more than one
        text = f"{batch}×({normalized})" if self.normalized_ndim > 1 else f"{batch}×{normalized}"
        if self.scale != 1.0:
            text += f", σ={self.scale:g}"
        return text


# Sizes 1 and primes, realistic widths, multi-dim normalized_shape, and small-variance tokens (σ² = 1e-4 ≈ 10ε)
# where ε's placement in the formula shows.
CASES: tuple[Case, ...] = (
    Case((1, 1)),
    Case((3, 7)),
    Case((8, 1000)),
    Case((8, 1000), scale=0.01),
    Case((4, 16, 768)),
    Case((2, 3, 4096)),
    Case((5, 4, 6), normalized_ndim=2),
    Case((2, 3, 8, 64), normalized_ndim=2),
)
QUICK_CASES: tuple[Case, ...] = (CASES[0], CASES[1], CASES[3], CASES[6])
