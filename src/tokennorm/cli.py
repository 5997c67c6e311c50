"""``tokennorm`` command line: ``tokennorm verify | bench | demo | audit | explain | patch-check``.

Each subcommand lives in its own module, imported only when that subcommand runs, exposing
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# subcommand -> module implementing it
COMMANDS = {
    "verify": "tokennorm.verify",
    "bench": "tokennorm.bench.cli",
    "demo": "tokennorm.demo",
    "audit": "tokennorm.audit_cli",
    "explain": "tokennorm.explain_cli",
    "patch-check": "tokennorm.patch_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokennorm", description="Per-token normalization for Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
