"""The backend setting: start-up value, run-time switches, and the choice on a CUDA tensor (unknown values and the
interpreter: tests/api/test_bad_input.py)."""

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


def test_the_setting_is_read_once_and_switched_by_the_api(monkeypatch, backend_from_environment):
    backend_from_environment("torch")
    assert backend.get_backend() == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "triton")  # the environment after start-up changes nothing
    assert backend.get_backend() == "torch"
    with backend.using_backend(" Triton "):
        assert backend.get_backend() == "triton"
        with backend.using_backend("auto"):
            assert backend.get_backend() == "auto"
        assert backend.get_backend() == "triton"
    assert backend.get_backend() == "torch"
    backend.set_backend("auto")
    assert backend.get_backend() == "auto"


def test_using_backend_restores_a_bad_start_up_value(backend_from_environment):
    backend_from_environment("cuda")
    with backend.using_backend("torch"):
        assert backend.get_backend() == "torch"
    with pytest.raises(ValueError, match="TOKENNORM_BACKEND='cuda'"):
        backend.get_backend()
    with pytest.raises(RuntimeError):  # the body's error propagates; the setting still comes back
        with backend.using_backend("triton"):
            raise RuntimeError
    with pytest.raises(ValueError, match="TOKENNORM_BACKEND='cuda'"):
        backend.get_backend()
