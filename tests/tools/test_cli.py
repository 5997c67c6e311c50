"""``tokennorm``'s command line: one convention for every command, and help and argument errors answered
without importing torch (which alone takes ~1.5 s to import on a 2-core machine)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from tokennorm import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_module_follows_the_convention(command):
    module = importlib.import_module(cli.COMMANDS[command][0])
    assert module.__name__ == f"tokennorm.tools.{command.replace('-', '_')}.cli"
    assert list(inspect.signature(module.add_arguments).parameters) == ["parser"]
    assert list(inspect.signature(module.run).parameters) == ["args"]


def test_help_and_argument_errors_do_not_import_torch():
    """Every command's --help and a bad option, in one process: the exit codes, and torch never imported."""
    code = """
import contextlib, io, sys
from tokennorm.cli import COMMANDS, main
codes = []
for argv in [["--help"], ["nosuchcommand"], *([c, "--help"] for c in COMMANDS), *([c, "--bogus"] for c in COMMANDS)]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            codes.append(exc.code)
    assert "torch" not in sys.modules, argv
print(codes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n = len(cli.COMMANDS)
    assert out.strip() == str([0, 2] + [0] * n + [2] * n)


def test_an_argument_error_is_argparse_usage_and_one_line_exit_2():
    out = subprocess.run([sys.executable, "-m", "tokennorm", "verify", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines()[1:] == ["tokennorm: error: unrecognized arguments: --bogus"]
