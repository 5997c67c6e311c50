"""Argument checks for sharded norms, raised identically on every rank of the group.

A rank that raised alone would leave the others waiting in the next collective. So each rank first writes what
it was given (shapes, dtype, eps, its own local findings) into a small int64 vector, one all-gather shares the
vectors, and every rank runs the same checks on the same table: either all ranks raise the same error, or none
does. The exchange waits at most ``TOKENNORM_DIST_TIMEOUT`` seconds (default 300), so ranks that passed
different process groups get an error instead of a hang.
"""

from __future__ import annotations

import math
import os
import struct
import time
from dataclasses import astuple, dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["TIMEOUT_ENV_VAR", "LocalProblem", "RankArgs", "exchange_and_check", "group_ranks"]

TIMEOUT_ENV_VAR = "TOKENNORM_DIST_TIMEOUT"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MASK = (1 << 62) - 1


class LocalProblem:
    """Bit flags for problems a rank finds in its own arguments; the others learn of them in the exchange."""

    GROUP_VS_MESH = 1  # `group` is not the group of the mesh dim that shards x's last dim
    WEIGHT_LAYOUT = 2  # weight_shard is a DTensor not laid out like x (same mesh, Shard(0) on its mesh dim)
    BIAS_LAYOUT = 4
    RESIDUAL_SHAPE = 8  # residual_shard's shape differs from x_shard's
    RESIDUAL_LAYOUT = 16  # residual_shard is a DTensor placed differently from x


_PROBLEMS = (
    (
        LocalProblem.GROUP_VS_MESH,
        ValueError,
        "group: the process group passed is not the group of x_shard's DeviceMesh dim that shards its last dim",
    ),
    (
        LocalProblem.WEIGHT_LAYOUT,
        ValueError,
        "weight_shard: a DTensor weight must live on x_shard's DeviceMesh, sharded Shard(0) on the mesh dim that "
        "shards x_shard's last dim and replicated on the others (and x_shard must then be a DTensor too)",
    ),
    (
        LocalProblem.BIAS_LAYOUT,
        ValueError,
        "bias_shard: a DTensor bias must live on x_shard's DeviceMesh, sharded Shard(0) on the mesh dim that "
        "shards x_shard's last dim and replicated on the others (and x_shard must then be a DTensor too)",
    ),
    (LocalProblem.RESIDUAL_SHAPE, RuntimeError, "residual_shard must have x_shard's shape"),
    (
        LocalProblem.RESIDUAL_LAYOUT,
        ValueError,
        "residual_shard: a DTensor residual must have x_shard's DeviceMesh and placements",
    ),
)


@dataclass(frozen=True)
class RankArgs:
    """What one rank was given, as int64 fields (-1 where an optional argument is None)."""

    ndim: int
    rows: int
    lead_hash: int  # hash of x_shard.shape[:-1]: same tokens on every rank
    width: int  # x_shard.shape[-1], this rank's shard of the normalized dim
    weight_numel: int
    weight_ndim: int
    bias_numel: int
    bias_ndim: int
    full_size: int
    dtype: int  # index in _DTYPES, -1 for a non-floating dtype
    eps_bits: int
    kind: int  # 0 LayerNorm, 1 RMSNorm
    needs_grad: int  # whether backward runs a collective (x or residual requires grad)
    problems: int  # LocalProblem flags

    @classmethod
    def describe(
        cls,
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        full_size: Optional[int],
        eps: float,
        is_rms: bool,
        problems: int,
        needs_grad: bool,
    ) -> "RankArgs":
        return cls(
            ndim=x.dim(),
            rows=math.prod(x.shape[:-1]),
            lead_hash=hash(tuple(x.shape[:-1])) & _MASK,
            width=x.shape[-1] if x.dim() else -1,
            weight_numel=-1 if weight is None else weight.numel(),
            weight_ndim=-1 if weight is None else weight.dim(),
            bias_numel=-1 if bias is None else bias.numel(),
            bias_ndim=-1 if bias is None else bias.dim(),
            full_size=-1 if full_size is None else int(full_size),
            dtype=_DTYPES.index(x.dtype) if x.dtype in _DTYPES else -1,
            eps_bits=struct.unpack("<q", struct.pack("<d", float(eps)))[0],
            kind=int(is_rms),
            needs_grad=int(needs_grad),
            problems=problems,
        )


def group_ranks(group: dist.ProcessGroup) -> list[int]:
    """The global ranks of ``group``, in group-rank order."""
    return dist.get_process_group_ranks(group)


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV_VAR, "300")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV_VAR}={raw!r} is not a number of seconds") from None
    return timedelta(seconds=seconds)


def _exchange(mine: RankArgs, group: dist.ProcessGroup, device: torch.device, fn: str) -> list[RankArgs]:
    fields = astuple(mine)
    world = dist.get_world_size(group)
    local = torch.tensor(fields, dtype=torch.int64, device=device)
    table = torch.empty(world * len(fields), dtype=torch.int64, device=device)
    timeout = _timeout()
    started = time.monotonic()
    work = all_gather_single(table, local, group=group, async_op=True)
    try:
        work.wait(timeout=timeout)
    except RuntimeError as err:
        if time.monotonic() - started < timeout.total_seconds():
            raise  # the collective itself failed: torch's error says why
        raise RuntimeError(
            f"{fn}: the argument check on group (global ranks {group_ranks(group)}) did not complete within "
            f"{timeout.total_seconds():g} s. Every rank of the group must call {fn} with the same process group; "
            f"a rank that passes a different group, or skips the call, leaves the others waiting "
            f"(set {TIMEOUT_ENV_VAR} to wait longer)"
        ) from err
    return [RankArgs(*row) for row in table.view(world, len(fields)).tolist()]


def all_gather_single(output: Tensor, input: Tensor, group: dist.ProcessGroup, async_op: bool = False):
    """``dist.all_gather_single`` where torch has it, else its older name ``all_gather_into_tensor``."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(output, input, group=group, async_op=async_op)


def _per_rank(table: list[RankArgs], field: str) -> list:
    return [getattr(a, field) for a in table]


def _ranks_where(table: list[RankArgs], bad) -> list[int]:
    return [r for r, a in enumerate(table) if bad(a)]


def exchange_and_check(
    fn: str,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    full_size: Optional[int],
    eps: float,
    is_rms: bool,
    problems: int,
    group: dist.ProcessGroup,
    needs_grad: bool,
) -> None:
    """Share every rank's arguments and raise the same error on every rank if any are wrong.

    ``needs_grad``: whether backward will run a collective on this rank (x, or the residual, requires grad).
    """
    mine = RankArgs.describe(x, weight, bias, full_size, eps, is_rms, problems, needs_grad)
    table = _exchange(mine, group, x.device, fn)
    widths = _per_rank(table, "width")

    for flag, error, text in _PROBLEMS:
        bad = _ranks_where(table, lambda a: a.problems & flag)
        if bad:
            raise error(f"{fn}: {text} (on group rank(s) {bad})")
    if len(set(_per_rank(table, "kind"))) > 1:
        raise ValueError(f"{fn}: the ranks of the group called different norms (LayerNorm vs RMSNorm)")
    dtypes = [str(_DTYPES[d]) if d >= 0 else "non-floating" for d in _per_rank(table, "dtype")]
    if -1 in _per_rank(table, "dtype"):
        raise TypeError(f"{fn}: x_shard must be a floating-point tensor, but got dtypes per group rank {dtypes}")
    if len(set(dtypes)) > 1:
        raise TypeError(f"{fn}: x_shard must have the same dtype on every rank, but got {dtypes}")
    if len(set(_per_rank(table, "eps_bits"))) > 1:
        eps_values = [struct.unpack("<d", struct.pack("<q", b))[0] for b in _per_rank(table, "eps_bits")]
        raise ValueError(f"{fn}: eps must be the same on every rank, but got eps per group rank {eps_values}")
    if min(_per_rank(table, "ndim")) < 1:
        raise RuntimeError(f"{fn}: x_shard must have at least 1 dim (the sharded hidden dim is its last)")
    if any(len(set(_per_rank(table, f))) > 1 for f in ("ndim", "rows", "lead_hash")):
        raise RuntimeError(
            f"{fn}: x_shard must hold the same tokens on every rank (same shape except the last dim), but its "
            f"leading shape differs across ranks: dims per group rank {_per_rank(table, 'ndim')}, tokens per "
            f"group rank {_per_rank(table, 'rows')}"
        )
    if len(set(_per_rank(table, "needs_grad"))) > 1:
        raise ValueError(
            f"{fn}: whether the input requires grad must agree on every rank (backward runs a collective), but got "
            f"{[bool(v) for v in _per_rank(table, 'needs_grad')]}"
        )
    _check_param(fn, "weight_shard", table, "weight")
    _check_param(fn, "bias_shard", table, "bias")

    given = set(_per_rank(table, "full_size"))
    if len(given) > 1:
        raise ValueError(f"{fn}: full_size must be the same on every rank, but got {_per_rank(table, 'full_size')}")
    total = sum(widths)
    full = given.pop()
    if full != -1 and total != full:
        raise RuntimeError(
            f"{fn}: the shard sizes (x_shard.shape[-1] per group rank) {widths} add up to {total}, but "
            f"full_size={full}: the shards of the group must tile the normalized dim exactly"
        )
    if total == 0:
        raise RuntimeError(f"{fn}: the normalized dim is empty on every rank (shard sizes {widths})")


def _check_param(fn: str, name: str, table: list[RankArgs], field: str) -> None:
    numel = _per_rank(table, f"{field}_numel")
    if len({n == -1 for n in numel}) > 1:
        given = [n != -1 for n in numel]
        raise ValueError(f"{fn}: {name} must be given on every rank or on none, but given per group rank: {given}")
    bad = _ranks_where(
        table,
        lambda a: (
            getattr(a, f"{field}_numel") != -1
            and (getattr(a, f"{field}_ndim") != 1 or getattr(a, f"{field}_numel") != a.width)
        ),
    )
    if bad:
        raise RuntimeError(
            f"{fn}: {name} must be 1-D with x_shard.shape[-1] elements on every rank, but on group rank(s) {bad} "
            f"it is not: {name} numel per group rank {numel}, dims {_per_rank(table, field + '_ndim')}, "
            f"x_shard.shape[-1] per group rank {_per_rank(table, 'width')}"
        )
