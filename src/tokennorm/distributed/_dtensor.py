"""DTensor in, DTensor out: find the process group that shards the hidden dim, work on local shards, rewrap.

A DTensor's placements are the same on every rank by construction, so a placement error raised here (before
any collective) is raised by every rank. Mismatches between a rank's own arguments are only recorded, as
:class:`LocalProblem` flags, and reported by the argument exchange on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from tokennorm.distributed._validate import LocalProblem, group_ranks

try:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # torch < 2.5 kept DTensor under a private name
    from torch.distributed._tensor import DTensor, Partial, Replicate, Shard  # type: ignore[no-redef]

__all__ = ["DTensor", "LocalArgs", "unwrap"]


@dataclass
class LocalArgs:
    """The local shards to compute on, the group that shards the hidden dim, and how to rewrap outputs."""

    x: Tensor
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    residual: Optional[Tensor]
    group: dist.ProcessGroup
    full_size: Optional[int]
    problems: int
    rewrap: Callable[[Tensor], Tensor]


def unwrap(
    fn: str,
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    group: Optional[dist.ProcessGroup],
    full_size: Optional[int],
) -> LocalArgs:
    """Local tensors and group for a sharded norm call; plain tensors pass through unchanged."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}: torch.distributed is not initialized; call torch.distributed.init_process_group")
    if isinstance(x, DTensor):
        return _unwrap_dtensor(fn, x, weight, bias, residual, group, full_size)
    group = dist.group.WORLD if group is None else group
    if dist.get_rank(group) < 0:
        raise ValueError(f"{fn}: group: this rank (global rank {dist.get_rank()}) is not a member of the group")
    problems = 0
    if isinstance(weight, DTensor):
        problems |= LocalProblem.WEIGHT_LAYOUT
        weight = weight.to_local()
    if isinstance(bias, DTensor):
        problems |= LocalProblem.BIAS_LAYOUT
        bias = bias.to_local()
    if isinstance(residual, DTensor):
        problems |= LocalProblem.RESIDUAL_LAYOUT
        residual = residual.to_local()
    return LocalArgs(x, weight, bias, residual, group, full_size, problems, lambda t: t)


def _unwrap_dtensor(
    fn: str,
    x: DTensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    group: Optional[dist.ProcessGroup],
    full_size: Optional[int],
) -> LocalArgs:
    mesh, placements = x.device_mesh, tuple(x.placements)
    last = x.dim() - 1
    shard_dims = [i for i, p in enumerate(placements) if p.is_shard() and p.dim % x.dim() == last]
    if x.dim() == 0 or len(shard_dims) != 1 or any(p.is_partial() for p in placements):
        raise ValueError(
            f"{fn}: a DTensor x_shard must be sharded on its last dim by exactly one mesh dim (Shard(-1)) and "
            f"have no Partial placement, but got placements {placements}"
        )
    if full_size is not None and full_size != x.shape[-1]:
        raise ValueError(f"{fn}: full_size={full_size}, but the DTensor x_shard's last dim is {x.shape[-1]}")
    mesh_dim = shard_dims[0]
    mesh_group = mesh.get_group(mesh_dim)
    problems = 0
    if group is not None and group_ranks(group) != group_ranks(mesh_group):
        problems |= LocalProblem.GROUP_VS_MESH
    # γ/β gradients: this rank's shard on the hidden-dim mesh dim; a partial sum over its rows on mesh dims
    # that split the tokens (torch's own norm sharding rule does the same); replicated elsewhere.
    grad_placements = [
        Shard(0) if i == mesh_dim else Partial() if p.is_shard() else Replicate() for i, p in enumerate(placements)
    ]

    def laid_out_like_x(p: DTensor) -> bool:
        return (
            p.device_mesh == mesh
            and p.dim() == 1
            and all(
                q.is_shard() if i == mesh_dim else q.is_replicate()  # a 1-D param can only shard dim 0
                for i, q in enumerate(p.placements)
            )
        )

    def local_param(p: Optional[Tensor], flag: int) -> tuple[Optional[Tensor], int]:
        if not isinstance(p, DTensor):
            return p, 0
        if not laid_out_like_x(p):
            return p.to_local(), flag
        return p.to_local(grad_placements=grad_placements), 0

    weight, bad_weight = local_param(weight, LocalProblem.WEIGHT_LAYOUT)
    bias, bad_bias = local_param(bias, LocalProblem.BIAS_LAYOUT)
    problems |= bad_weight | bad_bias
    if isinstance(residual, DTensor):
        if residual.device_mesh != mesh or tuple(residual.placements) != placements:
            problems |= LocalProblem.RESIDUAL_LAYOUT
        residual = residual.to_local()
    stride = torch.empty(x.shape, device="meta").stride()

    def rewrap(t: Tensor) -> Tensor:
        return DTensor.from_local(t, mesh, placements, run_check=False, shape=x.shape, stride=stride)

    return LocalArgs(x.to_local(), weight, bias, residual, mesh_group, x.shape[-1], problems, rewrap)
