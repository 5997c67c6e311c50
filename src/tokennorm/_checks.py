"""Argument checks for the Triton path, with torch's exception types and messages.

The torch path needs none of these: torch raises its own errors. The Triton path calls them before launching,
so a user sees the same error whichever backend runs. Kept cheap: they run on every call.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # float8: not in torch's either


def as_shape(normalized_shape, name: str = "normalized_shape") -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints; TypeError like torch's for anything else (an int included).

    Elements may be anything torch takes as an int (numpy ints, 0-dim integer tensors, SymInts), never a bool.
    """
    if not isinstance(normalized_shape, (tuple, list, torch.Size)):
        raise TypeError(
            f"{name} must be a tuple of ints, not {type(normalized_shape).__name__}: {normalized_shape!r}"
        )
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


def check_norm_inputs(
    op: str,
    input: Tensor,
    normalized_shape: tuple[int, ...],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
) -> None:
    """Raise as torch does for a bad input / normalized_shape / weight / bias combination."""
    check_dtype(op, input)
    k = len(normalized_shape)
    if k == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            f"but got normalized_shape = {_fmt(normalized_shape)}"
        )
    if input.dim() < k or tuple(input.shape[input.dim() - k :]) != normalized_shape:
        raise RuntimeError(
            f"Given normalized_shape={_fmt(normalized_shape)}, expected input with shape [*, "
            f"{', '.join(str(d) for d in normalized_shape)}], but got input of size{_fmt(input.shape)}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if tuple(p.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{_fmt(p.shape)} and normalized_shape = {_fmt(normalized_shape)}"
            )
    check_devices(input, weight, bias)
    if op == "rms_norm":
        return  # torch's rms_norm takes a weight of any floating dtype; the kernels load it as such
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.dtype != input.dtype and not (
            p.dtype == torch.float32 and input.dtype in _LOW_PRECISION
        ):
            raise RuntimeError(
                f"mixed dtype: expected {name} to have the input's dtype ({input.dtype}), or torch.float32 for "
                f"a bfloat16/float16 input, but got {name} of dtype {p.dtype}"
            )


def check_dtype(op: str, input: Tensor) -> None:
    """NotImplementedError as torch's for an input dtype no norm kernel takes (integers, bool, complex, float8)."""
    if input.dtype not in _KERNEL_DTYPES:
        raise NotImplementedError(f'"{op}" not implemented for \'{_scalar_type_name(input.dtype)}\'')


def check_devices(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> None:
    """RuntimeError naming the parameter that is not on the input's device (torch's own message names none)."""
    for name, p in (("weight", weight), ("bias", bias)):
        if isinstance(p, Tensor) and p.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but got {name} on {p.device} "
                f"and input on {input.device}"
            )


def check_residual(x: Tensor, residual: Tensor) -> None:
    """The residual must match x in shape and device and be floating point (its dtype may differ)."""
    if tuple(residual.shape) != tuple(x.shape):
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
