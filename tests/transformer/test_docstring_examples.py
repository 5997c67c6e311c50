"""The examples in the docstrings of tokennorm.transformer and tokennorm.patching run and print what they show."""

import doctest
import importlib

import pytest
import torch

MODULES = [
    "tokennorm.transformer.attention",
    "tokennorm.transformer.blocks",
    "tokennorm.transformer.embedding",
    "tokennorm.transformer.feedforward",
    "tokennorm.transformer.lm",
    "tokennorm.transformer.norms",
    "tokennorm.transformer.stack",
    "tokennorm.patching.swap",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    import tokennorm
    from tokennorm import transformer

    torch.manual_seed(0)
    globs = {"torch": torch, "nn": torch.nn, "tokennorm": tokennorm, **vars(transformer), **vars(module)}
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, name, globs=globs) if t.examples]
    assert tests, f"{name} has no docstring example"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {name} (see the output above)"
