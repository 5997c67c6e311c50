"""Sequence parallelism: the tokens are split across ranks, γ and β are replicated.

The statistics are per token, so the forward pass needs no communication: each rank normalizes its own tokens
with the whole γ and β, using the ordinary modules. Only the parameter gradients span tokens
(dγ = Σ_tokens dy·x̂, dβ = Σ_tokens dy; DyT's dα, dγ, dβ; AdaLN-Zero's projection, whose shift/scale/gate
gradients sum each sample's tokens): each rank holds the sum over its own tokens, and the sum over the group's
ranks is the single-process gradient. :func:`allreduce_norm_grads` does that sum, in one all-reduce.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from tokennorm.adaptive import AdaLNZero
from tokennorm.distributed._dtensor import DTensor
from tokennorm.dynamic_tanh import DyT
from tokennorm.modules import AddNorm

__all__ = ["NORM_TYPES", "norm_parameters", "allreduce_norm_grads"]

# Replicated norms; tokennorm.LayerNorm / RMSNorm (and ChannelsFirstLayerNorm) subclass torch's LayerNorm / RMSNorm,
# AddDyT subclasses DyT (α, γ, β: sums over tokens). AdaLNZero's projection is replicated too, and its gradient
# is a sum over tokens (dshift, dscale, dgate sum each sample's tokens). The Sharded* modules are not included:
# their parameters are slices of a hidden dim, not replicas.
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, AddNorm, DyT, AdaLNZero)


def norm_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(qualified name, parameter) of every norm module's parameters in ``module`` (itself included), in order;
    a norm's submodules' too (AdaLNZero's ``linear``)."""
    found, seen = [], set()
    for prefix, m in module.named_modules():
        if isinstance(m, NORM_TYPES):
            for name, p in m.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    found.append((f"{prefix}.{name}" if prefix else name, p))
    return found


def allreduce_norm_grads(module: nn.Module, group: Optional[dist.ProcessGroup] = None, *, average: bool = False) -> int:
    """Sum the γ/β gradients of every norm in ``module`` over ``group``, in place; returns how many it reduced.

    Call it on every rank of ``group`` after ``backward()`` and before ``optimizer.step()`` (with gradient
    accumulation: after the last micro-batch). Then each rank's norm gradients equal those of one process
    running all the group's tokens, when the loss is the sum of the ranks' losses. ``average=True`` divides
    by the group size instead (the loss is the mean of equal-sized ranks' means).

    All gradients travel in one fp32 buffer (fp64 if any is fp64) and are cast back to their own dtype. A
    gradient that is None on every rank stays None; None on some ranks counts as zeros there. Every rank must
    hold the same model. Parameters sharded by FSDP2 or DTensor are refused: their reduction belongs to them.
    """
    params = norm_parameters(module)
    for name, p in params:
        if isinstance(p, DTensor) or isinstance(p.grad, DTensor):
            raise TypeError(
                f"allreduce_norm_grads: parameter {name!r} is a DTensor (FSDP2 / tensor parallel): its gradient "
                "reduction is done by DTensor, not here"
            )
    if not params:
        return 0
    devices = {p.device for _, p in params}
    if len(devices) > 1:
        raise ValueError(
            f"allreduce_norm_grads: the norm parameters are on several devices {sorted(map(str, devices))}"
        )
    acc = torch.float64 if any(p.dtype == torch.float64 for _, p in params) else torch.float32
    device = devices.pop()
    present = torch.tensor([p.grad is not None for _, p in params], dtype=acc, device=device)
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(acc) for _, p in params]
    buf = torch.cat([present, *grads])  # one collective for all norms
    dist.all_reduce(buf, group=group)
    if average:
        buf[len(params) :] /= dist.get_world_size(group)
    offset = len(params)
    for present_somewhere, (_, p) in zip(buf[: len(params)].tolist(), params):
        g = buf[offset : offset + p.numel()].view(p.shape).to(p.dtype)
        offset += p.numel()
        if not present_somewhere:
            continue
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)
    return len(params)
