"""``patch`` / ``unpatch`` / ``patch_report``: swap every recognized norm of a model for its replacement, and back.

Replacements share the original ``Parameter`` objects and take over the train/eval mode; the patch installs no
hooks. A module reachable under several paths is replaced once, so sharing is preserved. Each replacement keeps
its original (outside ``_modules``), so :func:`unpatch` restores it.
"""

from __future__ import annotations

import copy
from typing import Iterable, Union

from torch import nn

from tokennorm.patching.recognize import identify, is_candidate
from tokennorm.patching.replacements import TOKENNORM_CLASSES, build_replacement
from tokennorm.patching.report import Left, PatchReport, Replaced

NORMS = ("layernorm", "rmsnorm")
_ORIGINAL = "_tokennorm_original"  # on a replacement: the module it replaced (kept out of _modules)
_REPORT = "_tokennorm_patch_report"  # on the returned model: the last patch's report


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
        if not is_candidate(module):
            continue
        path, cls = module_paths[0] or "<model>", _class_name(module)
        norm, reason = identify(module)
        if norm is not None and norm.kind not in wanted:
            norm, reason = None, f"computes {norm.label}, which is not in norms={tuple(sorted(wanted))}"
        if norm is None:
            left.append(Left(path, cls, reason or "unknown"))
            continue
        new = build_replacement(norm, module.training)
        new.__dict__[_ORIGINAL] = module
        replacements[module_id] = new
        replaced.append(Replaced(path, cls, _class_name(new), norm.label, norm.eps, tuple(module_paths[1:]),
                                 norm.dtype_rule, norm.cast_parameters))
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
    if cls.__module__.startswith("tokennorm.patching"):
        return f"tokennorm.patching.{cls.__name__}"
    if cls in TOKENNORM_CLASSES:
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
