"""Which modules are norms tokennorm can replace: nominated by type, name or an ε attribute, proven by computation.

A candidate (a ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, a class whose name contains "Norm", or a leaf with an
ε attribute) is recognized only when probes on random parameters and inputs show that it computes a norm
tokennorm has, in float64 against :mod:`tokennorm.reference` and in float32 / bfloat16 / float16 against the
replacement itself (see :mod:`tokennorm.patching`); otherwise the reason it is left alone is returned.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from tokennorm import reference
from tokennorm.patching.replacements import (
    DTYPE_RULES,
    TOKENNORM_CLASSES,
    RecognizedNorm,
    build_replacement,
    rule_dtype,
)

EPS_ATTRIBUTES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps", "rms_norm_eps")
# ε tried on a module that has no ε attribute but a constant in its forward (OlmoLayerNorm: 1e-5): torch's
# LayerNorm default first, then the other usual values. The probe at sqrt(ε) scale tells them apart.
UNSTATED_EPS = (1e-5, 1e-6, 1e-12)
# A norm with neither parameters nor normalized_shape normalizes the last dim of whatever width: it is probed
# at two widths, and its replacement must take any.
ANY_WIDTH_PROBES = ((8,), (12,))
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
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


def is_candidate(module: nn.Module) -> bool:
    """Whether ``module`` is worth probing: torch's norms, a class named like a norm, or a leaf with an ε."""
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


def identify(module: nn.Module) -> tuple[Optional[RecognizedNorm], Optional[str]]:
    """(the norm ``module`` was proven to compute, None) or (None, why it is left alone)."""
    if isinstance(module, TOKENNORM_CLASSES):
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
    shape = _normalized_shape(module, weight, bias)  # None: no parameters, no normalized_shape: any width
    if shape is not None and any(p is not None and tuple(p.shape) != shape for p in (weight, bias)):
        return None, f"its parameters' shape differs from its normalized shape {shape}"
    eps_name = next((n for n in EPS_ATTRIBUTES if hasattr(module, n)), None)
    if eps_name is None:
        return _probe(module, shape, UNSTATED_EPS, weight, bias)
    eps = getattr(module, eps_name)
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool)) and not (
        eps is None and isinstance(module, nn.RMSNorm)
    ):
        return None, f"its {eps_name} is {eps!r}, not a number"
    return _probe(module, shape, (None if eps is None else float(eps),), weight, bias)


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
    module: nn.Module, shape: Optional[tuple], eps_values: tuple, weight: Optional[Tensor], bias: Optional[Tensor]
) -> tuple[Optional[RecognizedNorm], Optional[str]]:
    """Recognize the norm ``module`` computes with one of ``eps_values`` (its ε attribute, or the usual values
    when it has none), over ``shape`` (None: the last dim at the widths of ANY_WIDTH_PROBES)."""
    device = torch.device("cpu") if _device(module).type == "meta" else _device(module)
    gen = torch.Generator().manual_seed(0)  # a private generator: patching never moves torch's global RNG

    def rand(*size: int) -> Tensor:
        return torch.randn(size, generator=gen, dtype=torch.float64).to(device)

    memo = {id(p): nn.Parameter(rand(*p.shape), p.requires_grad) for p in module.parameters(recurse=False)}
    probe = copy.deepcopy(module, memo)
    pw, pb = probe._parameters.get("weight"), probe._parameters.get("bias")
    worst = math.inf
    for eps in eps_values:
        runs = []  # (normalized shape, input, output) in train and eval mode
        for width in (shape,) if shape is not None else ANY_WIDTH_PROBES:
            x = rand(*_PROBE_ROWS, *width) + rand(*_PROBE_ROWS, *(1,) * len(width))  # each token its own mean
            inputs = [x] + ([x * math.sqrt(eps)] if eps is not None and eps > 0 else [])
            try:
                runs += [(width, xi, _forward(probe, xi, mode)) for mode in (True, False) for xi in inputs]
            except Exception as e:  # a module whose forward(x) fails is not a drop-in norm
                return None, f"forward(x) failed on a probe input: {type(e).__name__}: {e}"
        if any(not isinstance(y, Tensor) or y.shape != xi.shape for _, xi, y in runs):
            return None, "forward(x) does not return a tensor of the input's shape"
        for kind, offset in _hypotheses(weight, bias):
            if eps is None and kind == "layernorm":  # eps=None is torch.nn.RMSNorm's default, meaningless here
                continue
            diff = max(_rel_diff(y, _reference(kind, xi, w, pw, pb, eps, offset)) for w, xi, y in runs)
            worst = min(worst, diff)
            if diff <= PROBE_RTOL:
                norm = RecognizedNorm(kind, eps, offset, shape, weight, bias)
                dtypes, reason = _probe_dtypes(probe, norm, runs[0][1], _dtype(module), _device(module))
                return (None, reason) if dtypes is None else (norm.with_params(weight, bias, *dtypes), None)
    unstated = "" if len(eps_values) == 1 else f" with any usual ε {eps_values} (it has no eps attribute)"
    return None, f"computes no norm tokennorm has{unstated} (closest differs by {worst:.1e} of the output's scale)"


def _probe_dtypes(
    probe: nn.Module, norm: RecognizedNorm, x: Tensor, own_dtype: torch.dtype, own_device: torch.device
) -> tuple[Optional[tuple[str, bool]], Optional[str]]:
    """((output dtype rule, cast_parameters), None) if a tokennorm replacement following them gives the
    original's output dtype and values for float32 / bfloat16 / float16 (and the module's own dtype) parameters
    and inputs, on the CPU and in the module's own dtype on its own device; else (None, why not). Parameters
    are cast to the compute dtype only where the plain replacement fails a mix the original takes."""
    with warnings.catch_warnings():  # torch warns about the mixed dtypes the probe tries on purpose
        warnings.simplefilter("ignore")
        return _probe_dtypes_quietly(probe, norm, x, own_dtype, own_device)


def _probe_dtypes_quietly(
    probe: nn.Module, norm: RecognizedNorm, x: Tensor, own_dtype: torch.dtype, own_device: torch.device
) -> tuple[Optional[tuple[str, bool]], Optional[str]]:
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
    rule = next(
        (r for r in DTYPE_RULES if all(y.dtype == rule_dtype(r, weight_dtype[p], d) for p, d, _, y in runs)), None
    )
    if rule is None:
        p, d, _, y = next(run for run in runs if run[3].dtype not in (run[0], run[1]))
        return None, (
            f"computes {norm.label}, but returns {y.dtype} for {p} parameters and a {d} input: none of "
            f"the output dtype rules {DTYPE_RULES}"
        )
    checks = [(p, d, original, x.to(d)) for p, d, original, _ in runs]
    if own_device.type not in ("cpu", "meta"):  # the module's own device may run another backend (Triton)
        original = copy.deepcopy(base).to(own_device, own_dtype)
        checks.append((own_dtype, own_dtype, original, x.to(own_device, own_dtype)))
    first_problem = None
    for cast in (False, True) if norm.weight is not None else (False,):
        problem = _replacement_problem(norm, rule, cast, checks)
        if problem is None:
            return (rule, cast), None
        first_problem = first_problem or problem
    return None, first_problem


def _replacement_problem(norm: RecognizedNorm, rule: str, cast: bool, checks: list) -> Optional[str]:
    """Why the replacement with this output rule and parameter cast differs from the original on ``checks``
    (parameter dtype, input dtype, original module, input), or None."""
    for p, d, original, xd in checks:
        params = original._parameters
        candidate = build_replacement(norm.with_params(params.get("weight"), params.get("bias"), rule, cast), False)
        try:
            expected, got = _forward(original, xd, False), _forward(candidate, xd, False)
        except Exception as e:
            return f"computes {norm.label}, but tokennorm fails with {p} parameters on a {d} input: {e}"
        where = f"with {p} parameters on a {d} input" + (f" on {xd.device}" if xd.device.type != "cpu" else "")
        if expected.dtype != got.dtype:
            return f"computes {norm.label}, but {where} returns {expected.dtype}, tokennorm {got.dtype}"
        diff, tol = _rel_diff(got, expected), max(_DTYPE_RTOL.get(t, PROBE_RTOL) for t in (p, d, got.dtype))
        if diff > tol:
            return f"computes {norm.label}, but {where} tokennorm differs by {diff:.1e} of the output's scale"
    return None


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
