"""Which implementation runs an op: torch's own kernels or tokennorm's Triton kernels.

The backend is a process-wide setting, like torch's own switches. ``TOKENNORM_BACKEND`` gives its value at
start-up (read once, when this module is first loaded); :func:`set_backend` and :func:`using_backend` change it
at run time:

* ``auto`` (default): Triton for CUDA tensors, torch for everything else.
* ``triton``: Triton always; on CPU tensors this needs Triton's interpreter (``TRITON_INTERPRET=1`` in the
  environment before tokennorm is imported: ``triton.jit`` reads it when the kernels are defined).
* ``torch``: torch's own ``F.layer_norm`` / ``F.rms_norm`` everywhere.

The setting is read on every call from a module variable (a few tens of nanoseconds), not from the
environment: a norm on a decode-sized CPU tensor takes a few microseconds in all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator

import torch

__all__ = ["BACKENDS", "ENV_VAR", "get_backend", "set_backend", "using_backend", "use_triton", "triton_available"]

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "TOKENNORM_BACKEND"

_TRITON_FOUND = importlib.util.find_spec("triton") is not None  # looked up once: imports are not undone
# CPU tensors can run the kernels only in Triton's interpreter, which triton.jit picks when the kernels are
# defined (at import, from the environment). Tools that run the kernels' host path on CPU tensors under a fake
# CUDA driver (tools/kernel_report's tokennorm_on_fake_gpu, tests/kernels/fake_gpu.py) set this to True.
_kernels_run_on_cpu = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The current setting and what it means per device, decided once in set_backend (the hot path reads two module
# variables). None: a call on such a tensor goes through _choose, which raises or decides.
_name: str = "auto"
_error: str | None = None  # TOKENNORM_BACKEND at start-up was not a backend: every call raises ValueError
_triton_on_cuda: bool | None = None
_triton_off_cuda: bool | None = False


def triton_available() -> bool:
    """True when the ``triton`` package can be imported. (A plain function, not an lru_cache: torch.compile
    traces it without a warning.)"""
    return _TRITON_FOUND


def _parse(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a backend is named by a str (one of {', '.join(BACKENDS)}), not {type(name).__name__}")
    normalized = name.strip().lower() or "auto"
    if normalized not in BACKENDS:
        raise ValueError(f"{name!r} is not a tokennorm backend; expected one of {', '.join(BACKENDS)}")
    return normalized


def get_backend() -> str:
    """The current backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Raises ValueError when ``TOKENNORM_BACKEND`` held something else at start-up and no backend was set since.
    """
    if _error is not None:
        raise ValueError(_error)
    return _name


backend_name = get_backend  # the name the bench tool and benchmarks/bench_block.py still use


def set_backend(name: str) -> None:
    """Make ``name`` (``"auto"``, ``"torch"`` or ``"triton"``; case and surrounding spaces ignored) the backend
    of every later call in this process, all threads. ValueError for anything else."""
    _apply(_parse(name), None)


def using_backend(name: str) -> contextlib.AbstractContextManager[None]:
    """Context manager: ``name`` is the backend inside the ``with`` block, the previous setting after it.

    Process-wide like :func:`set_backend` (not per thread); ValueError at once for a name that is not a
    backend. Example::

        with tokennorm.using_backend("torch"):
            y_ref = model(x)
    """
    return _scope(_parse(name))


@contextlib.contextmanager
def _scope(name: str) -> Iterator[None]:
    previous = (_name, _error)
    _apply(name, None)
    try:
        yield
    finally:
        _apply(*previous)


def _apply(name: str, error: str | None) -> None:
    global _name, _error, _triton_on_cuda, _triton_off_cuda
    _name, _error = name, error
    if error is not None:
        _triton_on_cuda = _triton_off_cuda = None
    else:
        _triton_on_cuda = name != "torch" if _TRITON_FOUND else (False if name == "torch" else None)
        _triton_off_cuda = None if name == "triton" else False


def _choose(x: torch.Tensor) -> bool:
    """The cases the hot path leaves: errors, and the triton backend on a tensor that is not on a CUDA device."""
    if _error is None and _name == "triton" and x.is_cpu and _kernels_run_on_cpu and _TRITON_FOUND:
        return True
    name = get_backend()
    if name == "torch":
        return False
    if x.is_cuda:
        raise RuntimeError(
            "tokennorm needs the 'triton' package for CUDA tensors; install it (pip install triton) "
            "or use the torch backend (tokennorm.set_backend('torch') or TOKENNORM_BACKEND=torch)"
        )
    if x.device.type == "cpu" and _kernels_run_on_cpu:
        raise RuntimeError("the triton backend needs the 'triton' package; install it (pip install triton)")
    raise RuntimeError(
        f"the triton backend cannot run on a {x.device.type} tensor: Triton runs CUDA tensors, and CPU tensors "
        "only under its interpreter (set TRITON_INTERPRET=1 before importing tokennorm)"
    )


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs tokennorm's Triton kernels (True) or torch's own (False).

    Raises RuntimeError, never falls back silently, when Triton is asked for and cannot run: a CUDA tensor
    without the triton package, or a CPU tensor with the triton backend outside the interpreter; ValueError
    when ``TOKENNORM_BACKEND`` held no backend at start-up.
    """
    try:
        choice = _triton_on_cuda if x.is_cuda else _triton_off_cuda
    except AttributeError:  # not a tensor: torch's path raises torch's TypeError for it
        return False
    return choice if choice is not None else _choose(x)


def _from_environment() -> None:
    value = os.environ.get(ENV_VAR) or "auto"
    try:
        _apply(_parse(value), None)
    except ValueError:
        _apply("auto", f"{ENV_VAR}={value!r} is not a tokennorm backend; expected one of {', '.join(BACKENDS)}")


_from_environment()
