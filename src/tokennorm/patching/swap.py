"""``patch`` / ``unpatch`` / ``patch_report``: swap every recognized norm of a model for its replacement, and back.

Replacements share the original ``Parameter`` objects and take over the train/eval mode; the patch installs no
hooks. A module reachable under several paths is replaced once, so sharing is preserved. Each replacement keeps
its original (outside ``_modules``), so :func:`unpatch` restores it.
"""

from __future__ import annotations

import copy
from typing import Iterable, Union

from torch import nn

from tokennorm.patching.extended import PATCHED_CLASSES, build_any, identify_any
from tokennorm.patching.recognize import is_candidate
from tokennorm.patching.replacements import TOKENNORM_CLASSES
from tokennorm.patching.report import Left, PatchReport, Replaced

NORMS = ("layernorm", "rmsnorm")
_ORIGINAL = "_tokennorm_original"  # on a replacement: the module it replaced (kept out of _modules)
_REPORT = "_tokennorm_patch_report"  # on the returned model: the last patch's report


def patch(model: nn.Module, *, norms: Union[str, Iterable[str]] = NORMS, inplace: bool = True) -> nn.Module:
    """Replace the LayerNorm / RMSNorm modules of ``model`` with tokennorm's and return the model.

    Every norm-like module (a torch norm, a class named like a norm, or a leaf with an ε attribute) is probed
    numerically and replaced only if it computes exactly one of, over its trailing ``normalized_shape``
    (tokennorm.patching describes the probe)::

        layernorm:  y = (x − mean(x)) / sqrt(var(x) + ε) · (w + offset) + b      (biased variance)
        rmsnorm:    y = x / sqrt(mean(x²) + ε) · (w + offset)                     offset 0, or 1 (Gemma)

    The replacement computes the same in the original's dtypes: its output dtype rule (input's, Llama's
    ``promote_types(weight, input)``, T5's weight dtype) and, where the original casts its parameters to float32
    (Cohere), that cast. It shares the original ``Parameter`` objects (state_dict keys, optimizers and tied
    weights stay valid), ε and train/eval mode, and installs no hooks; a module reachable under several paths is
    replaced once. What was replaced and what was left, and why, is in :func:`patch_report`. Patching a
    patched model changes nothing.

    Args:
        model: any ``nn.Module``, on any device (the meta device included) and dtype; a norm itself is
            replaced and returned.
        norms: which kinds to replace: ``"layernorm"``, ``"rmsnorm"`` or both (their ``1 + w`` forms
            included). Default: ``("layernorm", "rmsnorm")``.
        inplace: swap modules inside ``model``; ``False`` patches a deep copy and leaves ``model`` as it was.
            Default: True.

    Returns:
        ``model`` (or its copy) with the norms replaced, or the replacement when ``model`` is itself a norm:
        always use the return value.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``. ValueError: ``norms`` names no known kind.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        >>> model = tokennorm.patch(model)
        >>> type(model[1]).__name__, isinstance(model[1], torch.nn.LayerNorm)
        ('LayerNorm', True)
        >>> print(tokennorm.patch_report(model))
        replaced 1, left 0
          1: torch.nn.LayerNorm -> tokennorm.LayerNorm (layernorm, eps=1e-05)
    """
    wanted = _check_norms(norms)
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch() expects an nn.Module as model, but got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    replacements: dict[int, nn.Module] = {}
    replaced, left = [], []
    inside_replaced: set[int] = set()  # submodules of a replaced module (an adaptive norm's): the replacement owns them
    for module_id, (module, module_paths) in _paths_by_module(model).items():
        if isinstance(module, PATCHED_CLASSES):  # a replacement from an earlier patch owns its submodules too
            inside_replaced.update(id(m) for m in module.modules() if m is not module)
        if not is_candidate(module) or module_id in inside_replaced:
            continue
        path, cls = module_paths[0] or "<model>", _class_name(module)
        norm, reason = identify_any(module)
        if norm is not None and norm.kind not in wanted:
            norm, reason = None, f"computes {norm.label}, which is not in norms={tuple(sorted(wanted))}"
        if norm is None:
            left.append(Left(path, cls, reason or "unknown"))
            continue
        new = build_any(norm, module.training)
        inside_replaced.update(id(m) for m in module.modules() if m is not module)
        new.__dict__[_ORIGINAL] = module
        replacements[module_id] = new
        replaced.append(
            Replaced(
                path,
                cls,
                _class_name(new),
                norm.label,
                norm.eps,
                tuple(module_paths[1:]),
                norm.dtype_rule,
                norm.cast_parameters,
            )
        )
    model = _swap(model, replacements)
    model.__dict__[_REPORT] = PatchReport(tuple(replaced), tuple(left))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Put back the modules :func:`patch` replaced in ``model`` and return it.

    The originals get the replacements' current ``weight`` / ``bias`` Parameters (so training done on the
    patched model is kept) and train/eval mode. Modules that were not replaced by :func:`patch` are left alone;
    unpatching an unpatched model changes nothing.

    Args:
        model: a model returned by :func:`patch` (or any ``nn.Module``).

    Returns:
        ``model`` with the original modules back, or the original norm when ``model`` itself was a replacement.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example::

        >>> model = tokennorm.patch(torch.nn.Sequential(torch.nn.LayerNorm(8)))
        >>> model = tokennorm.unpatch(model)
        >>> type(model[0]) is torch.nn.LayerNorm
        True
    """
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
    """The report of the last :func:`patch` call that returned ``model``.

    Args:
        model: a model returned by :func:`patch`.

    Returns:
        a :class:`~tokennorm.patching.PatchReport`: ``replaced`` (path, original class, replacement class, the
        norm it computes, ε, other paths of a shared module, dtype behaviour kept) and ``left`` (path, class,
        the reason it was left); ``str()`` of it is a readable summary.

    Raises:
        ValueError: ``model`` was not returned by :func:`patch` (or was unpatched since).

    Example::

        >>> model = tokennorm.patch(torch.nn.Sequential(torch.nn.BatchNorm1d(8)))
        >>> print(tokennorm.patch_report(model))  # doctest: +ELLIPSIS
        replaced 0, left 1
          left 0: torch.nn.BatchNorm1d: has buffers (running_mean, running_var, num_batches_tracked): ...
    """
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
    if cls.__module__.startswith("tokennorm.patching"):
        return f"tokennorm.patching.{cls.__name__}"
    if cls in TOKENNORM_CLASSES or cls.__module__ == "tokennorm.channels_first":
        return f"tokennorm.{cls.__name__}"
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
