"""tokennorm on torch.distributed: norms whose hidden dim, or whose tokens, are split across ranks.

* Tensor parallel (hidden dim sharded): :func:`sharded_layer_norm`, :func:`sharded_rms_norm`,
  :func:`sharded_add_norm` and the modules :class:`ShardedLayerNorm`, :class:`ShardedRMSNorm`,
  :class:`ShardedAddNorm`; plain tensors with a process group, or DTensors sharded ``Shard(-1)``.
* Sequence parallel (tokens split, γ/β replicated): :func:`allreduce_norm_grads`.
* FSDP2: ``torch.distributed.fsdp.fully_shard`` works on tokennorm's modules as they are.

See docs/distributed.md for the statistics merge and the communication volume.
"""

from tokennorm.distributed._validate import TIMEOUT_ENV_VAR
from tokennorm.distributed.modules import ShardedAddNorm, ShardedLayerNorm, ShardedRMSNorm
from tokennorm.distributed.sequence_parallel import allreduce_norm_grads, norm_parameters
from tokennorm.distributed.tensor_parallel import (
    default_shard_sizes,
    sharded_add_norm,
    sharded_layer_norm,
    sharded_rms_norm,
)

__all__ = [
    "TIMEOUT_ENV_VAR",
    "ShardedAddNorm",
    "ShardedLayerNorm",
    "ShardedRMSNorm",
    "allreduce_norm_grads",
    "default_shard_sizes",
    "norm_parameters",
    "sharded_add_norm",
    "sharded_layer_norm",
    "sharded_rms_norm",
]
