"""Argument checks for the Triton path, with torch's exception types and messages.

The torch path needs none of these: torch raises its own errors (tokennorm only adds the name of a parameter
on the wrong device). The Triton path calls them before launching, so a user sees the same error whichever
backend runs. Kept cheap: they run on every call.
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Input dtypes the kernels take; the others go to torch, which computes them (complex rms_norm) or raises.
KERNEL_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def as_shape(normalized_shape, name: str = "normalized_shape") -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints; TypeError like torch's for anything else (an int included).

    Elements may be anything torch takes as an int (numpy ints, 0-dim integer tensors, SymInts), never a bool.
    """
    if not isinstance(normalized_shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a tuple of ints, not {type(normalized_shape).__name__}: {normalized_shape!r}")
    shape = []
    for pos, d in enumerate(normalized_shape):
        try:
            if isinstance(d, bool):
                raise TypeError
            shape.append(d if isinstance(d, torch.SymInt) else operator.index(d))
        except (TypeError, RuntimeError):
            raise TypeError(
                f"{name} must be a tuple of ints, but found element of type {type(d).__name__} at pos {pos}: "
                f"{normalized_shape!r}"
            ) from None
    return tuple(shape)


def _scalar_type_name(dtype: torch.dtype) -> str:
    """torch's name for a dtype in its error messages: 'Long' for torch.int64, 'ComplexFloat' for complex64."""
    return torch.empty(0, dtype=dtype).type().removeprefix("torch.").removesuffix("Tensor")


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_tensor_argument(op: str, name: str, position: int, value) -> None:
    """TypeError, with torch's message, unless ``value`` is a Tensor or None."""
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"{op}(): argument '{name}' (position {position}) must be Tensor, not {type(value).__name__}")


def as_eps(op: str, position: int, eps) -> float:
    """``eps`` as a Python float; TypeError with torch's message for what torch refuses (None, str, complex,
    tensors that are not 0-dim real). Accepts what torch accepts: ints, bools, numpy scalars, 0-dim tensors."""
    if eps.__class__ is float:
        return eps
    if isinstance(eps, numbers.Real):
        return float(eps)
    if isinstance(eps, Tensor) and eps.dim() == 0 and not eps.is_complex():
        return float(eps)
    raise TypeError(f"{op}(): argument 'eps' (position {position}) must be float, not {type(eps).__name__}")


def norm_row_length(
    op: str,
    input: Tensor,
    normalized_shape,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
) -> int:
    """Raise as torch does for a bad normalized_shape / weight / bias for ``input``; else return the row length
    (the product of ``normalized_shape``). ``op`` is ``"layer_norm"`` or ``"rms_norm"`` (their messages differ,
    as torch's do). The input's dtype is not checked here: dtypes the kernels do not take go to torch."""
    if weight is not None and not isinstance(weight, Tensor):
        check_tensor_argument(op, "weight", 3, weight)
    if bias is not None and not isinstance(bias, Tensor):
        check_tensor_argument(op, "bias", 4, bias)
    if (
        normalized_shape.__class__ is tuple and len(normalized_shape) == 1 and normalized_shape[0].__class__ is int
    ):  # the common case, e.g. a module's (4096,): no copy
        shape, n = normalized_shape, normalized_shape[0]
        trailing_ok = input.dim() >= 1 and input.shape[-1] == n
    else:
        shape = as_shape(normalized_shape)
        n = 1
        for d in shape:
            n *= d
        trailing_ok = 0 < len(shape) <= input.dim() and input.shape[input.dim() - len(shape) :] == shape
    if not trailing_ok:
        _raise_shape_mismatch(op, input, shape)
    # One condition per parameter on the common path (no loop, no tuple of pairs: host time); _check_parameter
    # raises torch's error, or returns for a float32 parameter of a 16-bit input
    if weight is not None or bias is not None:
        device, dtype, layer_norm = input.device, input.dtype, op == "layer_norm"
        if weight is not None and (
            weight.shape != shape or weight.device != device or (layer_norm and weight.dtype != dtype)
        ):
            _check_parameter(op, "weight", weight, input, shape)
        if bias is not None and (bias.shape != shape or bias.device != device or (layer_norm and bias.dtype != dtype)):
            _check_parameter(op, "bias", bias, input, shape)
    return n


def _check_parameter(op: str, name: str, p: Tensor, input: Tensor, shape: tuple) -> None:
    if p.shape != shape:
        raise RuntimeError(
            f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
            f"{_fmt(p.shape)} and normalized_shape = {_fmt(shape)}"
        )
    if p.device != input.device:
        raise _wrong_device(name, p, input.device)
    # torch's rms_norm takes a weight of any floating dtype (the kernels load it as such); layer_norm the
    # input's dtype, or float32 for a 16-bit input
    dtype = input.dtype
    if op == "layer_norm" and p.dtype != dtype and not (p.dtype == torch.float32 and dtype in _LOW_PRECISION):
        raise RuntimeError(
            f"mixed dtype: expected {name} to have the input's dtype ({dtype}), or torch.float32 for a "
            f"bfloat16/float16 input, but got {name} of dtype {p.dtype}"
        )


def check_dtype(op: str, input: Tensor) -> None:
    """NotImplementedError as torch's for an input dtype no norm kernel takes (integers, bool, complex, float8)."""
    if input.dtype not in KERNEL_DTYPES:
        raise NotImplementedError(f"\"{op}\" not implemented for '{_scalar_type_name(input.dtype)}'")


def check_norm_inputs(
    op: str, input: Tensor, normalized_shape, weight: Optional[Tensor], bias: Optional[Tensor]
) -> None:
    """For the ops built on a norm (ada_norm, DyT, channels-first LayerNorm): the input's dtype (``op`` names the
    kernel in the message, as torch's do), then :func:`norm_row_length`'s checks, with RMSNorm's messages for
    ``op == "rms_norm"`` and LayerNorm's (and its parameter dtype rule) otherwise."""
    check_dtype(op, input)
    norm_row_length("rms_norm" if op == "rms_norm" else "layer_norm", input, normalized_shape, weight, bias)


def _raise_shape_mismatch(op: str, input: Tensor, shape: tuple) -> None:
    k = len(shape)
    if k == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            f"but got normalized_shape = {_fmt(shape)}"
        )
    if op == "rms_norm" and input.dim() < k:
        raise ValueError(f"Input tensor must have at least {k} dimensions, but got {input.dim()}")
    star = "*, " if op == "layer_norm" else "*"
    raise RuntimeError(
        f"Given normalized_shape={_fmt(shape)}, expected input with shape [{star}"
        f"{', '.join(str(d) for d in shape)}], but got input of size{_fmt(input.shape)}"
    )


def check_devices(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> None:
    """RuntimeError naming the parameter that is not on the input's device (torch's own message names none)."""
    device = input.device
    for name, p in (("weight", weight), ("bias", bias)):
        if isinstance(p, Tensor) and p.device != device:
            raise _wrong_device(name, p, device)


def _wrong_device(name: str, p: Tensor, device: torch.device) -> RuntimeError:
    return RuntimeError(
        f"Expected all tensors to be on the same device, but got {name} on {p.device} and input on {device}"
    )


def check_residual(x: Tensor, residual: Tensor) -> None:
    """The residual must match x in shape and device and be floating point (its dtype may differ)."""
    if residual.shape != x.shape:
        raise RuntimeError(
            f"Expected residual to have the shape of x, but got residual of shape {_fmt(residual.shape)} "
            f"and x of shape {_fmt(x.shape)}"
        )
    if residual.device != x.device:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but got residual on {residual.device} and x on {x.device}"
        )
    if not residual.is_floating_point():
        raise TypeError(f"residual must be a floating-point tensor, but got residual of dtype {residual.dtype}")
