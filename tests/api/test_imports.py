"""The package's shape: ``import tokennorm`` is lazy, and each layer imports only the layers below it.

Layers, bottom to top: the math and settings (reference, moments, _checks, backend, dispatch) → kernels → ops →
functional → modules → transformer / distributed → patching → tools (each tool on its own) → the command line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tokennorm

SRC = Path(tokennorm.__file__).resolve().parent  # src/tokennorm

LAYERS = [
    (
        "tokennorm._lazy",
        "tokennorm.reference",
        "tokennorm.moments",
        "tokennorm._checks",
        "tokennorm.backend",
        "tokennorm.dispatch",
    ),
    ("tokennorm.kernels",),
    ("tokennorm.ops",),
    ("tokennorm.functional",),
    ("tokennorm.modules", "tokennorm.adaptive", "tokennorm.dynamic_tanh", "tokennorm.channels_first"),
    ("tokennorm.transformer", "tokennorm.distributed"),
    ("tokennorm.patching", "tokennorm"),  # the package root's public names include tokennorm.patch
    ("tokennorm.tools",),
    ("tokennorm.cli", "tokennorm.__main__"),
]


def _layer(module: str) -> int:
    """Index in LAYERS of the longest prefix naming ``module`` or a package holding it."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, module
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(tokennorm module imported, at module level?) for every import in ``path``, except those under
    ``if TYPE_CHECKING:`` (never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child, top)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, top) for a in node.names if a.name.split(".")[0] == "tokennorm")
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{this}: a relative import (tokennorm imports by absolute names)"
            base = node.module or ""
            if base.split(".")[0] == "tokennorm":
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if _is_module(sub) else base, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_module_is_in_a_layer():
    for module in GRAPH:
        _layer(module)


def test_no_module_imports_a_layer_above_it():
    upward = [(m, dep) for m, deps in GRAPH.items() for dep, _ in deps if _layer(dep) > _layer(m)]
    assert upward == []


# Declared dependencies between tools: the kernel report makes the same public calls as the benchmark, so it
# takes the benchmark's cases and implementations rather than defining them twice; tune measures with the
# benchmark's harness, so that its numbers and the benchmark's are taken the same way.
TOOL_DEPENDENCIES = {("kernel_report", "bench"), ("tune", "bench")}


def test_tools_do_not_import_each_other():
    def tool(module: str) -> str:
        return module.split(".")[2] if module.startswith("tokennorm.tools.") else ""

    crossing = [
        (m, dep)
        for m, deps in GRAPH.items()
        for dep, _ in deps
        if tool(m) and tool(dep) not in ("", tool(m)) and (tool(m), tool(dep)) not in TOOL_DEPENDENCIES
    ]
    assert crossing == []


def test_no_import_cycles_at_import_time():
    edges = {m: {dep for dep, top in deps if top and dep != m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt) :] + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_the_graph_sees_real_imports():
    """The checks above are only as good as the graph: it must contain the edges everyone knows exist."""
    assert ("tokennorm.kernels.launch", True) in GRAPH["tokennorm.ops"]
    assert ("tokennorm.kernels.launcher", True) in GRAPH["tokennorm.kernels.launch"]
    assert ("tokennorm.ops", True) in GRAPH["tokennorm.functional"]
    assert ("tokennorm.modules", True) in GRAPH["tokennorm.patching.replacements"]
    assert ("tokennorm.tools.verify.checks", False) in GRAPH["tokennorm.tools.verify.cli"]


def test_import_tokennorm_loads_neither_torch_nor_the_patch_tool():
    code = "import sys, tokennorm; print(sorted(m for m in ('torch', 'tokennorm.patching') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve_and_are_stored_on_the_package():
    from tokennorm.functional import add_norm
    from tokennorm.modules import LayerNorm
    from tokennorm.patching import patch

    assert set(tokennorm.__all__) <= set(dir(tokennorm))
    assert (tokennorm.LayerNorm, tokennorm.add_norm, tokennorm.patch) == (LayerNorm, add_norm, patch)
    assert all(name in vars(tokennorm) for name in ("LayerNorm", "add_norm", "patch"))  # no __getattr__ next time
    for name in tokennorm.__all__:
        getattr(tokennorm, name)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'LayerNrom'"):
        tokennorm.LayerNrom  # noqa: B018
