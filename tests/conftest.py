"""Test session setup: without a GPU, Triton kernels run on the CPU in Triton's interpreter.

TRITON_INTERPRET must be set before tokennorm's kernels are defined (triton.jit reads it then), so it is set
here, before any test module imports tokennorm.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The device the Triton path runs on: the GPU when there is one, else the CPU under the interpreter.
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def triton_backend(monkeypatch):
    """Force tokennorm's Triton kernels for the test (they run in the interpreter on a CPU-only machine)."""
    monkeypatch.setenv("TOKENNORM_BACKEND", "triton")
    return KERNEL_DEVICE


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("TOKENNORM_BACKEND", "torch")
