"""The core API's docstrings are contracts, as torch's are: the formula in a math block, every argument
documented with its default, shapes, what is returned, an example (issue 17, item 4)."""

import inspect
import re

import pytest

import tokennorm

NORMS = [
    tokennorm.layer_norm,
    tokennorm.rms_norm,
    tokennorm.add_norm,
    tokennorm.LayerNorm,
    tokennorm.RMSNorm,
    tokennorm.AddNorm,
]
SETTINGS = [tokennorm.get_backend, tokennorm.set_backend, tokennorm.using_backend]


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections (``Args:``, ``Shape:``, ...) of a docstring, by title."""
    doc = inspect.cleandoc(doc)
    parts = re.split(r"^(\w[\w ]*):(?::)?\s*$", doc, flags=re.MULTILINE)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def _arguments(args_section: str) -> dict[str, str]:
    """Each documented argument's text; ``device, dtype: ...`` documents both."""
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in args_section.splitlines():
        head = re.match(r"^    (\w[\w, ]*):\s(.*)$", line)
        if head:
            names = [name.strip() for name in head.group(1).split(",")]
            for name in names:
                entries[name] = head.group(2)
        elif line.startswith("        "):
            for name in names:
                entries[name] += " " + line.strip()
    return entries


def _parameters(obj) -> list[inspect.Parameter]:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("obj", NORMS + SETTINGS, ids=lambda o: o.__name__)
def test_every_argument_is_documented_with_its_default(obj):
    doc = obj.__doc__
    assert doc and re.search(r"Examples?::", doc), "an example"
    params = _parameters(obj)
    if not params:
        assert "Returns:" in doc
        return
    documented = _arguments(_sections(doc)["Args"])
    for p in params:
        assert p.name in documented, f"argument {p.name} is not documented"
        if p.default is not inspect.Parameter.empty:
            assert "Default" in documented[p.name], f"argument {p.name}: its default is not stated"


@pytest.mark.parametrize("obj", NORMS, ids=lambda o: o.__name__)
def test_norms_state_their_formula_and_shapes(obj):
    doc = obj.__doc__
    assert ".. math::" in doc and "Shape:" in doc
    assert "Returns:" in doc or "Attributes:" in doc  # functions return; modules hold parameters


def test_the_section_parser_reads_what_it_checks():
    """The checks above can fail: an undocumented argument and a missing default are found."""

    def documented(x, eps=1e-5):
        """Args:
            x: the input.
            eps: a number.

        Example::
        """

    entries = _arguments(_sections(documented.__doc__)["Args"])
    assert set(entries) == {"x", "eps"} and "Default" not in entries["eps"]
    with pytest.raises(AssertionError, match="default is not stated"):
        test_every_argument_is_documented_with_its_default(documented)
