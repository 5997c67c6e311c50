"""Recognizers beyond per-token norm leaves: diffusers' adaptive norms and channels-first LayerNorm.

* ``diffusers.models.normalization.AdaLayerNormZero`` (DiT, PixArt, …) and ``AdaLayerNormContinuous`` (SD3, Flux,
  …) are replaced by modules with the same submodules (``emb``, ``silu``, ``linear``, ``norm``), state_dict,
  ``forward`` signature and outputs, whose norm-and-modulate step is :func:`tokennorm.ada_norm`.
* A leaf norm that normalizes dim 1 of ``[B, C, *]`` (timm's ``LayerNorm2d``, ConvNeXt's
  ``LayerNorm(data_format="channels_first")``, transformers' ``ConvNextLayerNorm``) becomes a
  :class:`tokennorm.ChannelsFirstLayerNorm` sharing its weight and bias.

As for the plain norms, the class only nominates: a module is replaced only when a probe shows the replacement
computes what it computes — on a float64 copy with random parameters against the original (adaptive norms) or
:func:`tokennorm.reference.layer_norm_channels_first` (channels-first), then in float32 / bfloat16 / float16
against the original itself (same output dtypes, values within rounding).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from tokennorm import reference
from tokennorm.adaptive import ada_norm
from tokennorm.channels_first import ChannelsFirstLayerNorm
from tokennorm.patching import recognize
from tokennorm.patching.replacements import RecognizedNorm, build_replacement

_PROBE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class RecognizedModule:
    """A module proven to compute an extended norm, and how to build its replacement (sharing its parameters)."""

    kind: str  # "layernorm" | "rmsnorm": what ``patch(norms=…)`` selects it by
    label: str
    eps: Optional[float]
    build: Callable[[bool], nn.Module]  # training mode → the replacement
    dtype_rule: str = "input"
    cast_parameters: bool = False  # as RecognizedNorm's; these replacements take the original's dtypes as they are


def _output_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


class PatchedAdaLayerNormZero(nn.Module):
    """diffusers' ``AdaLayerNormZero`` with its norm and modulation fused by :func:`tokennorm.ada_norm`: the same
    submodules, state_dict, arguments and outputs ``(x, gate_msa, shift_mlp, scale_mlp, gate_mlp)``."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.emb, self.silu, self.linear, self.norm = original.emb, original.silu, original.linear, original.norm
        self.eps = original.norm.eps

    def forward(
        self,
        x: Tensor,
        timestep: Optional[Tensor] = None,
        class_labels: Optional[Tensor] = None,
        hidden_dtype: Optional[torch.dtype] = None,
        emb: Optional[Tensor] = None,
    ):
        if self.emb is not None:
            emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
        emb = self.linear(self.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
        y = ada_norm(x, shift_msa, scale_msa, eps=self.eps)
        return y.to(_output_dtype(x.dtype, emb.dtype)), gate_msa, shift_mlp, scale_mlp, gate_mlp


class PatchedAdaLayerNormContinuous(nn.Module):
    """diffusers' ``AdaLayerNormContinuous`` (``scale, shift = chunk(linear(silu(c)))``, then
    ``norm(x)·(1 + scale) + shift``) with the norm's affine and the modulation fused by :func:`tokennorm.ada_norm`."""

    def __init__(self, original: nn.Module, kind: str) -> None:
        super().__init__()
        self.silu, self.linear, self.norm = original.silu, original.linear, original.norm
        self.kind = kind

    def forward(self, x: Tensor, conditioning_embedding: Tensor) -> Tensor:
        emb = self.linear(self.silu(conditioning_embedding).to(x.dtype))
        scale, shift = torch.chunk(emb, 2, dim=1)
        weight, bias = self.norm.weight, getattr(self.norm, "bias", None)
        y = ada_norm(x, shift, scale, norm=self.kind, weight=weight, bias=bias, eps=self.norm.eps)
        # diffusers' RMSNorm returns its float32 weight's dtype for a low-precision x; LayerNorm returns x's
        norm_dtype = (
            weight.dtype
            if self.kind == "rmsnorm" and weight is not None and weight.dtype not in (torch.float16, torch.bfloat16)
            else x.dtype
        )
        return y.to(_output_dtype(norm_dtype, emb.dtype))


PATCHED_CLASSES = (PatchedAdaLayerNormZero, PatchedAdaLayerNormContinuous)


def _diffusers_class(module: nn.Module) -> Optional[str]:
    """'AdaLayerNormZero' / 'AdaLayerNormContinuous' for diffusers' own classes (never a subclass), else None."""
    cls = type(module)
    if cls.__module__ == "diffusers.models.normalization" and cls.__name__ in (
        "AdaLayerNormZero",
        "AdaLayerNormContinuous",
    ):
        return cls.__name__
    return None


def _rel_diff(a: Tensor, b: Tensor) -> float:
    return recognize._rel_diff(a, b)


def _outputs(module: nn.Module, args: tuple) -> tuple[Tensor, ...]:
    with torch.no_grad():
        out = module(*args)
    return out if isinstance(out, tuple) else (out,)


def _compare(original: nn.Module, replacement: nn.Module, args: tuple, rtol: float, where: str) -> Optional[str]:
    try:
        want, got = _outputs(original, args), _outputs(replacement, args)
    except Exception as e:  # noqa: BLE001 - a module that fails on the probe is left, with the reason
        return f"fails on a probe input {where}: {type(e).__name__}: {e}"
    if len(want) != len(got):
        return f"returns {len(want)} outputs, the replacement {len(got)} {where}"
    for i, (w, g) in enumerate(zip(want, got)):
        if w.dtype != g.dtype:
            return f"output {i} is {w.dtype}, the replacement's {g.dtype} {where}"
        diff = _rel_diff(g, w)
        if diff > rtol:
            return f"output {i} differs from the replacement's by {diff:.1e} of its scale {where}"
    return None


def _adaptive(module: nn.Module, name: str) -> tuple[Optional[RecognizedModule], Optional[str]]:
    norm = getattr(module, "norm", None)
    if isinstance(norm, nn.LayerNorm):
        kind = "layernorm"
    elif type(norm).__name__ == "RMSNorm" and name == "AdaLayerNormContinuous":
        kind = "rmsnorm"
    else:
        return None, f"its norm is {type(norm).__name__}, which tokennorm does not fuse"
    hooked = [m for m in module.modules() if any(getattr(m, d, None) for d in recognize._HOOK_DICTS)]
    if hooked or any("forward" in m.__dict__ for m in module.modules()):
        return None, "it or a submodule has hooks or an instance-level forward that a replacement would drop"

    def build(original: nn.Module) -> nn.Module:
        if name == "AdaLayerNormZero":
            return PatchedAdaLayerNormZero(original)
        return PatchedAdaLayerNormContinuous(original, kind)

    gen = torch.Generator().manual_seed(0)
    d_model = module.linear.out_features // (6 if name == "AdaLayerNormZero" else 2)

    def probe_args(m: nn.Module, dtype: torch.dtype) -> tuple:
        x = torch.randn(2, 5, d_model, generator=gen, dtype=torch.float64).to(dtype)
        if name == "AdaLayerNormContinuous":
            return x, torch.randn(2, m.linear.in_features, generator=gen, dtype=torch.float64).to(dtype)
        if m.emb is None:
            return x, None, None, None, torch.randn(2, m.linear.in_features, generator=gen).to(dtype)
        classes = m.emb.class_embedder.embedding_table.num_embeddings - 1  # the last row is the "dropped" label
        return (x, torch.rand(2, generator=gen) * 1000, torch.randint(0, classes, (2,), generator=gen), dtype, None)

    probe = copy.deepcopy(module).cpu().eval()  # eval: a label embedder's dropout would draw from torch's RNG
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    probe = probe.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = _compare(probe, build(probe), probe_args(probe, torch.float64), recognize.PROBE_RTOL, "in float64")
        for dtype in _PROBE_DTYPES:
            if problem:
                break
            low = copy.deepcopy(probe).to(dtype)
            problem = _compare(low, build(low), probe_args(low, dtype), recognize._DTYPE_RTOL[dtype], f"in {dtype}")
    if problem:
        return None, f"computes no adaptive norm tokennorm has: {problem}"
    eps = float(norm.eps) if norm.eps is not None else None
    label = f"adaptive {kind} ({name})"
    return RecognizedModule(kind, label, eps, lambda training: build(module).train(training)), None


def _channels_first(module: nn.Module) -> tuple[Optional[RecognizedModule], Optional[str]]:
    """A leaf whose forward normalizes dim 1 of [B, C, *] with a [C] weight/bias and its ε attribute."""
    weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
    shape = recognize._normalized_shape(module, weight, bias)
    eps_name = next((n for n in recognize.EPS_ATTRIBUTES if hasattr(module, n)), None)
    if module._modules or module._buffers or shape is None or len(shape) != 1 or eps_name is None:
        return None, None
    eps = getattr(module, eps_name)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or (weight is None and bias is not None):
        return None, None
    if set(module._parameters) - {"weight", "bias"} or any(p is not None and p.shape != shape for p in (weight, bias)):
        return None, None
    if recognize._forward_arguments_problem(module) or "forward" in module.__dict__:
        return None, None
    if any(getattr(module, d, None) for d in recognize._HOOK_DICTS):
        return None, None
    c, eps = shape[0], float(eps)
    gen = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(module).cpu()
    with torch.no_grad():
        for p in probe.parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    probe = probe.double()
    pw, pb = probe._parameters.get("weight"), probe._parameters.get("bias")
    found = None
    for spatial in ((3, 4), (5,)):  # an image [B, C, H, W], then audio [B, C, T]
        x = torch.randn(2, c, *spatial, generator=gen, dtype=torch.float64)
        x = x + torch.randn(2, 1, *spatial, generator=gen, dtype=torch.float64)  # each pixel with its own mean
        inputs = [x] + ([x * math.sqrt(eps)] if eps > 0 else [])
        try:
            outs = [recognize._forward(probe, xi, mode) for mode in (True, False) for xi in inputs]
        except Exception:  # noqa: BLE001 - e.g. timm's LayerNorm2d takes only 4-D inputs
            continue
        refs = [reference.layer_norm_channels_first(xi, pw, pb, eps) for _ in (True, False) for xi in inputs]
        if all(y.shape == r.shape and _rel_diff(y, r) <= recognize.PROBE_RTOL for y, r in zip(outs, refs)):
            found = x
            break
    if found is None:
        return None, None

    def build(original: nn.Module, training: bool) -> nn.Module:
        params = original._parameters
        new = ChannelsFirstLayerNorm(
            c, eps, params.get("weight") is not None, params.get("bias") is not None, device="meta"
        )
        if new.weight is not None:
            new.weight = params["weight"]
        if new.bias is not None:
            new.bias = params["bias"]
        return new.train(training)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dtype in _PROBE_DTYPES:
            low = copy.deepcopy(probe).to(dtype).eval()
            problem = _compare(low, build(low, False), (found.to(dtype),), recognize._DTYPE_RTOL[dtype], f"in {dtype}")
            if problem:
                return None, f"computes a channels-first layernorm, but {problem}"
    label = "layernorm, channels first"
    return RecognizedModule("layernorm", label, eps, lambda training: build(module, training)), None


def identify_any(module: nn.Module) -> tuple[Optional[Union[RecognizedNorm, RecognizedModule]], Optional[str]]:
    """What ``module`` was proven to compute — a plain norm (:func:`recognize.identify`), one of diffusers' adaptive
    norms or a channels-first LayerNorm — or (None, why it is left alone)."""
    if isinstance(module, (*PATCHED_CLASSES, ChannelsFirstLayerNorm)):
        return None, "already a tokennorm module"
    name = _diffusers_class(module)
    if name is not None:
        return _adaptive(module, name)
    norm, reason = recognize.identify(module)
    if norm is not None:
        return norm, None
    channels_first, problem = _channels_first(module)
    if channels_first is not None:
        return channels_first, None
    return None, problem or reason


def build_any(norm: Union[RecognizedNorm, RecognizedModule], training: bool) -> nn.Module:
    """The replacement of a module :func:`identify_any` recognized."""
    if isinstance(norm, RecognizedModule):
        return norm.build(training)
    return build_replacement(norm, training)
