"""Which implementation runs an op: torch's own kernels or tokennorm's Triton kernels.

``TOKENNORM_BACKEND`` is read on every call so tests and users can switch it at run time:

* ``auto`` (default): Triton for CUDA tensors, torch for everything else.
* ``triton``: Triton always; on CPU tensors this needs ``TRITON_INTERPRET=1`` (Triton's interpreter).
* ``torch``: torch's own ``F.layer_norm`` / ``F.rms_norm`` everywhere.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "backend_name", "use_triton", "triton_available"]

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "TOKENNORM_BACKEND"


_TRITON_FOUND = importlib.util.find_spec("triton") is not None  # looked up once: imports are not undone


def triton_available() -> bool:
    """True when the ``triton`` package can be imported. (A plain function, not an lru_cache: torch.compile
    traces it without a warning.)"""
    return _TRITON_FOUND


def backend_name() -> str:
    """The backend named by ``TOKENNORM_BACKEND``; ValueError for anything but auto, torch or triton."""
    name = os.environ.get(ENV_VAR) or "auto"
    if name in BACKENDS:  # the hot path: one dict lookup, one tuple scan
        return name
    normalized = name.strip().lower() or "auto"
    if normalized not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r} is not a tokennorm backend; expected one of {', '.join(BACKENDS)}")
    return normalized


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs tokennorm's Triton kernels (True) or torch's own (False).

    Raises RuntimeError, never falls back silently, when Triton is asked for and cannot run: a CUDA tensor
    without the triton package, or a CPU tensor with ``TOKENNORM_BACKEND=triton`` outside the interpreter.
    """
    name = backend_name()
    if name == "torch":
        return False
    if x.is_cuda:
        if not triton_available():
            raise RuntimeError(
                "tokennorm needs the 'triton' package for CUDA tensors; install it (pip install triton) "
                f"or set {ENV_VAR}=torch to use torch's own kernels"
            )
        return True
    if name == "auto":
        return False
    if x.device.type == "cpu" and _interpreting():
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}=triton needs the 'triton' package; install it (pip install triton)")
        return True
    raise RuntimeError(
        f"{ENV_VAR}=triton cannot run on a {x.device.type} tensor: Triton runs CUDA tensors, "
        "and CPU tensors only under its interpreter (set TRITON_INTERPRET=1)"
    )
