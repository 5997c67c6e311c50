"""Public names of a package that live in its submodules, imported on first use (PEP 562).

``import tokennorm`` (and ``tokennorm --help``) must not pay for torch; a name's first use imports the submodule
that defines it. The value is then stored on the package, so later lookups are plain attribute reads — no
``__getattr__`` call on the per-call path of ``tokennorm.layer_norm(...)``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the module defining it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
