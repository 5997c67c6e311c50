"""``tokennorm`` command line: ``tokennorm verify | bench | tune | demo | audit | explain | patch-check``.

Each subcommand is ``tokennorm/tools/<tool>/cli.py``, exposing ``add_arguments(parser)`` and ``run(args) -> int``
(the exit code). Only the module of the subcommand being run is imported, and it imports torch and its tool's
API inside ``run``: ``tokennorm --help`` and argument errors answer without loading torch, ``tokennorm verify``
does not pay for matplotlib or transformers, and a broken optional dependency of one command cannot break the
others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("tokennorm.tools.verify.cli", "check every op against the float64 reference on this machine"),
    "bench": ("tokennorm.tools.bench.cli", "benchmark tokennorm against torch and installed peers"),
    "tune": ("tokennorm.tools.tune.cli", "measure which of tokennorm's and torch's kernels auto runs on this GPU"),
    "demo": ("tokennorm.tools.demo.cli", "train a tiny causal LM comparing norm choices and placements"),
    "audit": ("tokennorm.tools.audit.cli", "measure leakage across tokens, batch items and padding in a model"),
    "explain": ("tokennorm.tools.explain.cli", "draw which elements share statistics; numeric walkthrough"),
    "patch-check": ("tokennorm.tools.patch_check.cli", "patch a local model with tokennorm and report the difference"),
}


def _chosen_command(argv: Sequence[str]) -> Optional[str]:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; the arguments of the subcommand named in ``argv`` are added (its module imported)."""
    parser = argparse.ArgumentParser(prog="tokennorm", description="Per-token normalization for Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
