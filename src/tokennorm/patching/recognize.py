"""``patch(model)``: swap a model's LayerNorm / RMSNorm modules for tokennorm's, proven equal on a probe first.

A module is a *candidate* when it is a ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, its class name contains
"Norm" (Hugging Face defines one such class per model family), or it is a leaf with an ε attribute. The name
only nominates: a candidate is swapped only when a numerical probe shows that it computes one of:

* ``layernorm``: ``(x − mean) / sqrt(var + ε) · w + b`` (torch, BERT, OLMo, …);
* ``rmsnorm``: ``x / sqrt(mean(x²) + ε) · w`` (torch, Llama, Mistral, Qwen, T5's RMS "LayerNorm", …);
* ``rmsnorm`` with a zero-centred weight, ``… · (1 + w)`` (Gemma, Qwen3-Next), and ``layernorm`` with one
  (Nemotron's ``LayerNorm1P``).

The probe runs on a float64 copy of the module whose parameters are replaced by random values (the module's
own values never matter, and a model on the meta device is probed the same way), with ε read from the
module's attributes (``eps``, ``variance_epsilon``, …), on inputs at unit scale and at ``sqrt(ε)`` scale (where
a wrong ε shows), in train and eval mode, against :mod:`tokennorm.reference`. A second probe runs the
original and the tokennorm replacement with float32, bfloat16 and float16 parameters (and the module's own
dtype) on inputs of each of those dtypes, and requires the same output dtype and values within rounding.
Norms differ in their output dtype when parameters and input differ: torch and Gemma return the input's
dtype, Llama ``promote_types(weight, input)`` (it multiplies the float32 weight by the normalized input cast
back), T5 the weight's; the replacement follows the same rule (``dtype_rule`` in the report). Anything else —
a module with buffers, extra parameters, hooks, an instance-level ``forward``, a ``forward`` taking more than
the input, or a computation that differs — is left alone and reported.

Replacements share the original ``Parameter`` objects (state_dict keys and optimizers stay valid) and take
over the train/eval mode; the patch installs no hooks. A module reachable under several paths is replaced
once, so sharing is preserved. Each replacement remembers its original, so :func:`unpatch` restores it.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from tokennorm import reference
from tokennorm.modules import AddNorm, LayerNorm, RMSNorm

__all__ = [
    "NORMS", "DTYPE_RULES", "Replaced", "Left", "PatchReport", "PatchedLayerNorm", "PatchedRMSNorm",
    "PatchedOffsetNorm", "patch", "unpatch", "patch_report",
]

NORMS = ("layernorm", "rmsnorm")
# The dtype of a norm's output when its parameters and its input differ in dtype: the input's (torch, Gemma),
# promote_types(weight, input) (Llama: float32 weight × normalized input cast back), or the weight's (T5).
DTYPE_RULES = ("input", "promote", "weight")
EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps", "rms_norm_eps")
_ORIGINAL = "_tokennorm_original"  # on a replacement: the module it replaced (kept out of _modules)
_REPORT = "_tokennorm_patch_report"  # on the returned model: the last patch's report
_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
# A float64 probe of a norm that computes in float32 (Llama casts to float32) agrees to ≤ 2e-7 of the output's
# scale (measured, n = 8 … 65536); a different computation differs by far more: no mean subtraction, another
# ε at the sqrt(ε) scale or 1 + w by ~0.1–1, the unbiased n − 1 variance by 1/(2n) (7.6e-6 at n = 65536).
PROBE_RTOL = 2e-6
# Second probe, in low-precision dtypes: the original and tokennorm may round a few times differently (Llama
# rounds x̂ to the input dtype before multiplying by w, torch once at the end): a few ulps at the output scale
# (bfloat16's ulp is 2^-8 ≈ 3.9e-3 of a value, float16's 2^-11 ≈ 4.9e-4). float64 keeps PROBE_RTOL: a norm
# that computes in float32 inside stays that far from tokennorm's float64 result.
_DTYPE_RTOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-5, torch.float64: PROBE_RTOL}
_PROBE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PROBE_ROWS = (3, 5)  # batch × tokens of the probe input


def _output_dtype(rule: str, weight: Optional[Tensor], input_dtype: torch.dtype) -> torch.dtype:
    return _rule_dtype(rule, None if weight is None else weight.dtype, input_dtype)


def _rule_dtype(rule: str, weight_dtype: Optional[torch.dtype], input_dtype: torch.dtype) -> torch.dtype:
    if rule == "input" or weight_dtype is None:
        return input_dtype
    return weight_dtype if rule == "weight" else torch.promote_types(weight_dtype, input_dtype)


class _DtypeRule:
    """Mixin: return the output in the dtype the replaced norm gave (``dtype_rule``, one of DTYPE_RULES)."""

    dtype_rule: str = "input"

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # type: ignore[misc]
        out = _output_dtype(self.dtype_rule, self.weight, x.dtype)  # type: ignore[attr-defined]
        return y if y.dtype == out else y.to(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dtype_rule={self.dtype_rule!r}"  # type: ignore[misc]


class PatchedLayerNorm(_DtypeRule, LayerNorm):
    """:class:`tokennorm.LayerNorm` whose output dtype follows ``dtype_rule`` (what the norm it replaced did)."""


class PatchedRMSNorm(_DtypeRule, RMSNorm):
    """:class:`tokennorm.RMSNorm` whose output dtype follows ``dtype_rule`` (Llama: ``promote``, T5: ``weight``)."""


class PatchedOffsetNorm(_DtypeRule, AddNorm):
    """:class:`tokennorm.AddNorm` without residual (a norm using ``weight + weight_offset``) whose output dtype
    follows ``dtype_rule``."""


_TOKENNORM_CLASSES = (LayerNorm, RMSNorm, AddNorm)


@dataclass(frozen=True)
class Replaced:
    """A module that ``patch`` replaced: where, what it was, what it became, and the math it was proven to do.

    ``other_paths`` are further paths of the same (shared) module; ``dtype_rule`` is the output dtype rule
    the probe found (see DTYPE_RULES)."""

    path: str
    from_class: str
    to_class: str
    kind: str
    eps: Optional[float]
    other_paths: tuple[str, ...] = ()
    dtype_rule: str = "input"


@dataclass(frozen=True)
class Left:
    """A norm-like module that ``patch`` left as it was, and why."""

    path: str
    cls: str
    reason: str


@dataclass(frozen=True)
class PatchReport:
    """What one :func:`patch` call replaced and what it left (and why)."""

    replaced: tuple[Replaced, ...] = ()
    left: tuple[Left, ...] = ()

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)}, left {len(self.left)}"]
        for r in self.replaced:
            also = f" (also {', '.join(r.other_paths)})" if r.other_paths else ""
            rule = f", output dtype: {r.dtype_rule}" if r.dtype_rule != "input" else ""
            lines.append(f"  {r.path}{also}: {r.from_class} -> {r.to_class} ({r.kind}, eps={r.eps}{rule})")
        lines += [f"  left {x.path}: {x.cls}: {x.reason}" for x in self.left]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Norm:
    """The computation a probe proved: which norm, ε, weight offset, and the module's parameters."""

    kind: str
    eps: Optional[float]
    weight_offset: float
    normalized_shape: tuple[int, ...]
    weight: Optional[Tensor] = field(repr=False)
    bias: Optional[Tensor] = field(repr=False)
    dtype_rule: str = "input"

    @property
    def label(self) -> str:
        return f"{self.kind}, weight + {self.weight_offset:g}" if self.weight_offset else self.kind

    def with_params(self, weight: Optional[Tensor], bias: Optional[Tensor], dtype_rule: str) -> "_Norm":
        return _Norm(self.kind, self.eps, self.weight_offset, self.normalized_shape, weight, bias, dtype_rule)


def patch(
    model: nn.Module, *, norms: Union[str, Iterable[str]] = NORMS, inplace: bool = True
) -> nn.Module:
    """Replace the LayerNorm / RMSNorm modules of ``model`` with tokennorm's and return the model.

    Every norm-like module is probed numerically (see the module docstring) and replaced only if it computes
    exactly a norm tokennorm implements; :func:`patch_report` on the returned model says what was replaced and
    what was left and why. Patching a patched model changes nothing. If ``model`` is itself a norm, the
    replacement is returned: always use the return value.

    Args:
        model: any ``nn.Module``, on any device (the meta device included) and dtype.
        norms: which kinds to replace: ``"layernorm"``, ``"rmsnorm"`` (their ``1 + w`` forms included).
        inplace: swap modules inside ``model`` (sharing its parameters); ``False`` patches a deep copy.

    Returns:
        ``model`` (or its copy) with the norms replaced; the root itself if it is not a norm.

    Example::

        >>> model = tokennorm.patch(AutoModel.from_pretrained(path))
        >>> print(tokennorm.patch_report(model))
    """
    wanted = _check_norms(norms)
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() expects an nn.Module as model, but got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    replacements: dict[int, nn.Module] = {}
    replaced, left = [], []
    for module_id, (module, module_paths) in _paths_by_module(model).items():
        if not _is_candidate(module):
            continue
        path, cls = module_paths[0] or "<model>", _class_name(module)
        norm, reason = _identify(module)
        if norm is not None and norm.kind not in wanted:
            norm, reason = None, f"computes {norm.label}, which is not in norms={tuple(sorted(wanted))}"
        if norm is None:
            left.append(Left(path, cls, reason or "unknown"))
            continue
        new = _build(norm, module.training)
        new.__dict__[_ORIGINAL] = module
        replacements[module_id] = new
        replaced.append(Replaced(path, cls, _class_name(new), norm.label, norm.eps, tuple(module_paths[1:]),
                                 norm.dtype_rule))
    model = _swap(model, replacements)
    model.__dict__[_REPORT] = PatchReport(tuple(replaced), tuple(left))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Put back the modules :func:`patch` replaced in ``model`` and return it (the original root if the root was
    replaced). The originals get the replacements' current parameters and train/eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unpatch() expects an nn.Module as model, but got {type(model).__name__}")
    restored = {}
    for module_id, (module, _) in _paths_by_module(model).items():
        original = module.__dict__.get(_ORIGINAL)
        if original is None:
            continue
        # the replacement may hold new Parameter objects by now (load_state_dict(assign=True), swap_tensors)
        for name in ("weight", "bias"):
            if name in original._parameters:
                original._parameters[name] = module._parameters.get(name)
        original.train(module.training)
        restored[module_id] = original
    model = _swap(model, restored)
    model.__dict__.pop(_REPORT, None)
    return model


def patch_report(model: nn.Module) -> PatchReport:
    """The report of the last :func:`patch` call that returned ``model``."""
    report = model.__dict__.get(_REPORT)
    if report is None:
        raise ValueError(f"patch_report: this {type(model).__name__} was not returned by tokennorm.patch()")
    return report


def _check_norms(norms: Union[str, Iterable[str]]) -> frozenset[str]:
    names = (norms,) if isinstance(norms, str) else tuple(norms)
    bad = [n for n in names if n not in NORMS]
    if bad or not names:
        raise ValueError(f"norms must name some of {', '.join(map(repr, NORMS))}, but got norms={norms!r}")
    return frozenset(names)


def _class_name(module: nn.Module) -> str:
    """``torch.nn.LayerNorm``, ``tokennorm.RMSNorm``; a third-party class by its own name (``LlamaRMSNorm``)."""
    cls = type(module)
    if getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    if cls in _TOKENNORM_CLASSES:
        return f"tokennorm.{cls.__name__}"
    if cls.__module__.startswith("tokennorm.patching"):
        return f"tokennorm.patching.{cls.__name__}"
    return cls.__qualname__


def _paths_by_module(model: nn.Module) -> dict[int, tuple[nn.Module, list[str]]]:
    """Every module of ``model`` once, with every path it is reachable under (tied modules have several)."""
    found: dict[int, tuple[nn.Module, list[str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        found.setdefault(id(module), (module, []))[1].append(path)
    return found


def _swap(model: nn.Module, new_by_id: dict[int, nn.Module]) -> nn.Module:
    """Point every slot holding a module in ``new_by_id`` at its new module; returns the (new) root."""
    if id(model) in new_by_id:
        return new_by_id[id(model)]
    for module, _ in _paths_by_module(model).values():
        for name, child in list(module._modules.items()):
            if child is not None and id(child) in new_by_id:
                module._modules[name] = new_by_id[id(child)]
    return model


def _is_candidate(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower():
        return True
    # an unconventionally named norm still has an ε
    return not module._modules and any(hasattr(module, name) for name in EPS_ATTRIBUTES)


def _forward_arguments_problem(module: nn.Module) -> Optional[str]:
    """Why ``forward`` is not ``forward(x)`` (a caller may pass what a tokennorm norm cannot take), or None."""
    try:
        params = list(inspect.signature(type(module).forward).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return "its forward has no inspectable signature"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        return "its forward does not take the input as its one positional argument"
    if len(params) > 1:
        names = ", ".join(str(p) for p in params[1:])
        return f"its forward takes more than the input ({names}), which a tokennorm norm cannot take"
    return None


def _identify(module: nn.Module) -> tuple[Optional[_Norm], Optional[str]]:
    """(the norm ``module`` was proven to compute, None) or (None, why it is left alone)."""
    if isinstance(module, _TOKENNORM_CLASSES):
        return None, "already a tokennorm module"
    if module._modules:
        return None, f"has submodules ({', '.join(module._modules)})"
    if module._buffers:
        return None, f"has buffers ({', '.join(module._buffers)}): state a per-token norm does not have"
    extra = sorted(set(module._parameters) - {"weight", "bias"})
    if extra:
        return None, f"has parameters other than weight and bias ({', '.join(extra)})"
    hooks = [name.strip("_") for name in _HOOK_DICTS if getattr(module, name, None)]
    if hooks:
        return None, f"has hooks ({', '.join(hooks)}) that a replacement would drop"
    if "forward" in module.__dict__:
        return None, "its forward is overridden on the instance (e.g. by an offloading hook)"
    problem = _forward_arguments_problem(module)
    if problem:
        return None, problem
    weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
    if weight is None and bias is not None:
        return None, "has a bias but no weight, which tokennorm's modules cannot express"
    if any(not p.is_floating_point() for p in (weight, bias) if p is not None):
        return None, "has non-floating-point parameters"
    shape = _normalized_shape(module, weight, bias)
    if shape is None:
        return None, "cannot tell its normalized shape (no weight, bias or normalized_shape)"
    if any(p is not None and tuple(p.shape) != shape for p in (weight, bias)):
        return None, f"its parameters' shape differs from its normalized shape {shape}"
    eps_name = next((n for n in EPS_ATTRIBUTES if hasattr(module, n)), None)
    if eps_name is None:
        return None, f"has no eps attribute ({', '.join(EPS_ATTRIBUTES)})"
    eps = getattr(module, eps_name)
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool)) and not (
        eps is None and isinstance(module, nn.RMSNorm)
    ):
        return None, f"its {eps_name} is {eps!r}, not a number"
    return _probe(module, shape, None if eps is None else float(eps), weight, bias)


def _normalized_shape(module: nn.Module, weight: Optional[Tensor], bias: Optional[Tensor]) -> Optional[tuple]:
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and shape and all(isinstance(d, int) for d in shape):
        return tuple(shape)
    param = weight if weight is not None else bias
    return None if param is None else tuple(param.shape)


def _hypotheses(weight: Optional[Tensor], bias: Optional[Tensor]) -> list[tuple[str, float]]:
    """(kind, weight_offset) pairs tokennorm can express for a module with these parameters."""
    offsets = (0.0,) if weight is None else (0.0, 1.0)
    kinds = ("layernorm",) if bias is not None else ("rmsnorm", "layernorm")  # tokennorm's RMSNorm has no bias
    return [(kind, offset) for kind in kinds for offset in offsets]


def _reference(kind: str, x: Tensor, shape: tuple, w: Optional[Tensor], b: Optional[Tensor], eps, offset: float):
    if kind == "layernorm":
        return reference.layer_norm(x, shape, w, b, eps, offset)
    return reference.rms_norm(x, shape, w, eps, offset)


def _probe(
    module: nn.Module, shape: tuple, eps: Optional[float], weight: Optional[Tensor], bias: Optional[Tensor]
) -> tuple[Optional[_Norm], Optional[str]]:
    device = torch.device("cpu") if _device(module).type == "meta" else _device(module)
    gen = torch.Generator().manual_seed(0)  # a private generator: patching never moves torch's global RNG

    def rand(*size: int) -> Tensor:
        return torch.randn(size, generator=gen, dtype=torch.float64).to(device)

    memo = {id(p): nn.Parameter(rand(*p.shape), p.requires_grad) for p in module.parameters(recurse=False)}
    probe = copy.deepcopy(module, memo)
    pw, pb = probe._parameters.get("weight"), probe._parameters.get("bias")
    x = rand(*_PROBE_ROWS, *shape) + rand(*_PROBE_ROWS, *(1,) * len(shape))  # each token with its own mean
    inputs = [x] + ([x * math.sqrt(eps)] if eps is not None and eps > 0 else [])
    try:
        outputs = [_forward(probe, xi, mode) for mode in (True, False) for xi in inputs]
    except Exception as e:  # a module whose forward(x) fails is not a drop-in norm
        return None, f"forward(x) failed on a probe input: {type(e).__name__}: {e}"
    if any(not isinstance(y, Tensor) or y.shape != x.shape for y in outputs):
        return None, "forward(x) does not return a tensor of the input's shape"
    worst = math.inf
    for kind, offset in _hypotheses(weight, bias):
        if eps is None and kind == "layernorm":  # eps=None is torch.nn.RMSNorm's default, meaningless here
            continue
        refs = [_reference(kind, xi, shape, pw, pb, eps, offset) for _ in (True, False) for xi in inputs]
        worst = min(worst, max(_rel_diff(y, r) for y, r in zip(outputs, refs)))
        if worst <= PROBE_RTOL:
            norm = _Norm(kind, eps, offset, shape, weight, bias)
            rule, reason = _probe_dtypes(probe, norm, x, _dtype(module), _device(module))
            return (None, reason) if rule is None else (norm.with_params(weight, bias, rule), None)
    return None, f"computes no norm tokennorm has (closest differs by {worst:.1e} of the output's scale)"


def _probe_dtypes(
    probe: nn.Module, norm: _Norm, x: Tensor, own_dtype: torch.dtype, own_device: torch.device
) -> tuple[Optional[str], Optional[str]]:
    """(the output dtype rule, None) if a tokennorm replacement following it gives the original's output dtype
    and values for float32 / bfloat16 / float16 (and the module's own dtype) parameters and inputs, on the CPU
    and in the module's own dtype on its own device; else (None, why not)."""
    with warnings.catch_warnings():  # torch warns about the mixed dtypes the probe tries on purpose
        warnings.simplefilter("ignore")
        return _probe_dtypes_quietly(probe, norm, x, own_dtype, own_device)


def _probe_dtypes_quietly(
    probe: nn.Module, norm: _Norm, x: Tensor, own_dtype: torch.dtype, own_device: torch.device
) -> tuple[Optional[str], Optional[str]]:
    base = copy.deepcopy(probe).cpu().eval()
    x = x.cpu()
    dtypes = tuple(dict.fromkeys((*_PROBE_DTYPES, own_dtype)))
    param_dtypes = dtypes if norm.weight is not None else (own_dtype,)  # no parameters: only the input counts
    runs = []  # (parameter dtype, input dtype, original module in that dtype, its output)
    for p_dtype in param_dtypes:
        original = copy.deepcopy(base).to(p_dtype)
        for x_dtype in dtypes:
            try:
                runs.append((p_dtype, x_dtype, original, _forward(original, x.to(x_dtype), False)))
            except Exception as e:  # torch.nn.LayerNorm rejects bfloat16 parameters with a float32 input
                if p_dtype == x_dtype == own_dtype:
                    return None, f"computes {norm.label}, but fails on a {own_dtype} input: {type(e).__name__}: {e}"
    weight_dtype = {p: (p if norm.weight is not None else None) for p in param_dtypes}
    rule = next((r for r in DTYPE_RULES
                 if all(y.dtype == _rule_dtype(r, weight_dtype[p], d) for p, d, _, y in runs)), None)
    if rule is None:
        p, d, _, y = next(run for run in runs if run[3].dtype not in (run[0], run[1]))
        return None, (f"computes {norm.label}, but returns {y.dtype} for {p} parameters and a {d} input: none of "
                      f"the output dtype rules {DTYPE_RULES}")
    checks = [(p, d, original, x.to(d)) for p, d, original, _ in runs]
    if own_device.type not in ("cpu", "meta"):  # the module's own device may run another backend (Triton)
        original = copy.deepcopy(base).to(own_device, own_dtype)
        checks.append((own_dtype, own_dtype, original, x.to(own_device, own_dtype)))
    for p, d, original, xd in checks:
        candidate = _build(norm.with_params(original._parameters.get("weight"), original._parameters.get("bias"),
                                            rule), False)
        try:
            expected, got = _forward(original, xd, False), _forward(candidate, xd, False)
        except Exception as e:
            return None, f"computes {norm.label}, but tokennorm fails with {p} parameters on a {d} input: {e}"
        where = f"with {p} parameters on a {d} input" + (f" on {xd.device}" if xd.device.type != "cpu" else "")
        if expected.dtype != got.dtype:
            return None, f"computes {norm.label}, but {where} returns {expected.dtype}, tokennorm {got.dtype}"
        diff, tol = _rel_diff(got, expected), max(_DTYPE_RTOL.get(t, PROBE_RTOL) for t in (p, d, got.dtype))
        if diff > tol:
            return None, f"computes {norm.label}, but {where} tokennorm differs by {diff:.1e} of the output's scale"
    return rule, None


def _forward(module: nn.Module, x: Tensor, training: bool) -> Tensor:
    module.train(training)
    with torch.no_grad():
        return module(x)


def _rel_diff(a: Tensor, b: Tensor) -> float:
    """max |a − b| over max |b|, in float64 (inf if anything is not finite)."""
    a, b = a.double(), b.double()
    diff = (a - b).abs().max().item()
    return diff / max(b.abs().max().item(), torch.finfo(torch.float64).tiny) if math.isfinite(diff) else math.inf


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters(recurse=False)), torch.device("cpu"))


def _dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters(recurse=False)), torch.float32)


def _build(norm: _Norm, training: bool) -> nn.Module:
    """The tokennorm module computing ``norm``, sharing its parameter objects (built on the meta device, so
    nothing is allocated before the parameters are put in)."""
    affine = norm.weight is not None
    plain = norm.dtype_rule == "input"
    new: nn.Module
    if norm.weight_offset:
        new = (AddNorm if plain else PatchedOffsetNorm)(
            norm.normalized_shape, norm=norm.kind, eps=norm.eps, bias=norm.bias is not None,
            weight_offset=norm.weight_offset, device="meta")
    elif norm.kind == "rmsnorm":
        new = (RMSNorm if plain else PatchedRMSNorm)(norm.normalized_shape, norm.eps, affine, device="meta")
    else:
        new = (LayerNorm if plain else PatchedLayerNorm)(
            norm.normalized_shape, norm.eps, affine, norm.bias is not None, device="meta")
    if not plain:
        new.dtype_rule = norm.dtype_rule
    if affine:
        new.weight = norm.weight
    if norm.bias is not None:
        new.bias = norm.bias
    return new.train(training)
