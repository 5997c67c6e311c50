"""The demo's models: ``tokennorm.transformer.CausalLM`` with one norm per run, from a registry of norms.

:data:`DEMO_NORMS` maps each name a ``--configs`` entry may use to a :class:`DemoNorm`: its label and colour in
the plots, and how the model is built. Every norm of ``tokennorm.transformer.norms.NORM_TYPES`` (``layernorm``,
``rmsnorm``, ``dyt``, ``batchnorm``, ``none``, and any added there later) is passed to ``CausalLM(norm=...)`` as
it is; the demo adds its own variants on top, today one:

``layernorm-detached``
    LayerNorm whose statistics are constants to autograd (:class:`DetachedStatsLayerNorm`): the same forward,
    but no gradient flows through μ and σ. Article 002 (after Xu et al., 2019, "Understanding and Improving
    Layer Normalization") claims that these gradients, not the forward normalization, are what makes
    LayerNorm stabilize training; the ``detach`` preset tests that claim.

A new norm plugs in with one :data:`DEMO_NORMS` entry (and, when ``tokennorm.transformer`` knows it, nothing
else).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from tokennorm.transformer import CausalLM
from tokennorm.transformer.norms import NORM_TYPES, ResidualNorm


class DetachedStatsLayerNorm(nn.LayerNorm):
    r"""LayerNorm over the last ``len(normalized_shape)`` dims with μ and σ² detached from the graph.

    .. math::
        y = \frac{x - \operatorname{sg}(\mu)}{\sqrt{\operatorname{sg}(\sigma^2) + \epsilon}} \cdot \gamma + \beta

    where sg (stop-gradient) is ``Tensor.detach``: the forward equals ``torch.nn.LayerNorm``'s, but the backward
    treats μ and σ² as constants, so ``∂L/∂x = rstd · (∂L/∂y · γ)`` without LayerNorm's two correction terms
    (``− mean(g)`` and ``− x̂ · mean(g · x̂)``). Same arguments, parameters and state_dict as
    ``torch.nn.LayerNorm``; statistics in float32 at least, as torch computes them.
    """

    def forward(self, input: Tensor) -> Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.to(input.dtype)


def _detach_layernorm_statistics(model: nn.Module) -> nn.Module:
    """Swap every LayerNorm of a ``CausalLM(norm="layernorm")`` for :class:`DetachedStatsLayerNorm`: the
    standalone norms directly (same parameters), the fused Add & Norms for a :class:`ResidualNorm` around one
    (same placement and dropout). Parameters are moved, not re-drawn: the initial weights stay those of the
    ``layernorm`` run."""
    from tokennorm.modules import AddNorm

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.LayerNorm) and not isinstance(module, DetachedStatsLayerNorm):
            new = DetachedStatsLayerNorm(
                module.normalized_shape,
                module.eps,
                module.elementwise_affine,
                module.bias is not None,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
        elif isinstance(module, AddNorm) and module.norm == "layernorm":
            norm = DetachedStatsLayerNorm(
                module.normalized_shape,
                module.eps,
                module.weight is not None,
                module.bias is not None,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            new = ResidualNorm(norm, module.placement, module.dropout)
        else:
            continue
        target = new.norm if isinstance(new, ResidualNorm) else new
        with torch.no_grad():
            if module.weight is not None:
                target.weight.copy_(module.weight)
            if module.bias is not None:
                target.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


@dataclass(frozen=True)
class DemoNorm:
    """A norm the demo can train with: its plot label and colour, the ``CausalLM`` norm it starts from, and a
    transform applied to the built model (None: the model as built)."""

    label: str
    color: str
    base: str
    transform: Optional[Callable[[nn.Module], nn.Module]] = None


_COLORS = {
    "layernorm": "tab:blue",
    "rmsnorm": "tab:orange",
    "dyt": "tab:green",
    "batchnorm": "tab:red",
    "none": "tab:gray",
}
_LABELS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "dyt": "DyT", "batchnorm": "BatchNorm", "none": "no norm"}

DEMO_NORMS: dict[str, DemoNorm] = {
    **{
        name: DemoNorm(_LABELS.get(name, name), _COLORS.get(name, f"C{i + 4}"), name)
        for i, name in enumerate(NORM_TYPES)
    },
    "layernorm-detached": DemoNorm(
        "LayerNorm, statistics detached", "tab:purple", "layernorm", _detach_layernorm_statistics
    ),
}


def build_model(
    norm: str,
    placement: str,
    vocab_size: int,
    *,
    d_model: int,
    nhead: int,
    num_layers: int,
    max_len: int,
    dropout: float,
    num_classes: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """``CausalLM`` with the norm ``norm`` (a :data:`DEMO_NORMS` name) at ``placement`` (``"post"``/``"pre"``);
    class-conditional (AdaLN-Zero blocks, ``CausalLM(num_classes=...)``) when ``num_classes`` is given.

    Draws its initial weights from torch's global RNG like ``CausalLM`` does: seed it first for repeatable runs.
    """
    spec = DEMO_NORMS[norm]
    model = CausalLM(
        vocab_size,
        d_model=d_model,
        nhead=nhead,
        num_layers=num_layers,
        max_len=max_len,
        dropout=dropout,
        norm=spec.base,
        placement=placement,
        num_classes=num_classes,
        device=device,
    )
    return spec.transform(model) if spec.transform else model
