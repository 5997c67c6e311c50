"""TOKENNORM_BACKEND's choice on a CUDA tensor (unknown values and the interpreter: tests/api/test_bad_input.py)."""

import types

import pytest
import torch

from tokennorm import backend


def test_cuda_without_triton_fails_fast(monkeypatch):
    monkeypatch.setenv("TOKENNORM_BACKEND", "auto")
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    fake_cuda_tensor = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    with pytest.raises(RuntimeError, match="needs the 'triton' package"):
        backend.use_triton(fake_cuda_tensor)
