"""The backend's choice on a CUDA tensor (unknown values and the interpreter: tests/api/test_bad_input.py)."""

import types

import pytest
import torch

from tokennorm import backend


def test_cuda_without_triton_fails_fast(monkeypatch):
    monkeypatch.setattr(backend, "_TRITON_FOUND", False)
    fake_cuda_tensor = types.SimpleNamespace(is_cuda=True, is_cpu=False, device=torch.device("cuda"))
    for name in ("auto", "triton"):
        with backend.using_backend(name), pytest.raises(RuntimeError, match="needs the 'triton' package"):
            backend.use_triton(fake_cuda_tensor)
