"""README.md's code blocks run as written: every ```python block is executed in a fresh namespace (on the CPU,
the default backend: torch's kernels), and every ```bash block names commands, files, markers and options that
exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]


def test_the_readme_has_code_to_check():
    assert len(PYTHON) >= 3 and len(BASH) >= 2


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs_as_written(code, capsys):
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def _commands(code: str) -> list[list[str]]:
    lines = [line.split("#", 1)[0].strip() for line in code.splitlines()]
    return [shlex.split(part) for line in lines if line for part in re.split(r"&&|;", line) if part.strip()]


@pytest.mark.parametrize("code", BASH, ids=[f"bash-{i}" for i in range(len(BASH))])
def test_bash_block_names_what_exists(code, pytestconfig):
    markers = {m.split(":")[0].strip() for m in pytestconfig.getini("markers")}
    for argv in _commands(code):
        if argv[0] == "bash":
            assert (ROOT / argv[1]).is_file(), argv
        elif argv[:3] == ["python3", "-m", "tokennorm"]:
            from tokennorm.cli import COMMANDS

            assert argv[3] in COMMANDS, argv
        elif argv[:3] == ["python3", "-m", "pytest"]:
            for i, arg in enumerate(argv[3:], start=3):
                if arg == "-m":
                    words = set(re.findall(r"[a-z_]+", argv[i + 1])) - {"not", "and", "or"}
                    assert words <= markers, argv
                elif arg.startswith("--hypothesis-profile="):
                    import hypothesis

                    hypothesis.settings.get_profile(arg.split("=", 1)[1])  # raises if not registered
                elif arg.startswith("tests/"):
                    assert (ROOT / arg.split("::")[0]).exists(), argv
        else:
            pytest.fail(f"a README command this test does not know how to check: {argv}")
