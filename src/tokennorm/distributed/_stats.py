"""Row statistics of a sharded hidden dim: what each rank sends, and the merge every rank runs on what it gets.

Pure math, no communication, so it can be checked in one process. A row of N elements is split into shards of
n_i elements (n_i may be 0). Each rank sends, per row, the mean m_i and the centred sum of squares
M2_i = Σ(x − m_i)² of its shard, and once per call its count n_i; the merge is :mod:`tokennorm.moments`
(Chan's parallel form, shifted by the mean of the largest shard), the same one the long-row kernels use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokennorm import moments

__all__ = ["local_moments", "merge_moments"]


def local_moments(x2: Tensor) -> Tensor:
    """This shard's contribution for the all-gather: ``[2·rows + 1]`` = (means, M2s, count).

    ``x2`` is the shard as [rows, n_i] in the compute dtype. An empty shard (n_i = 0) sends zeros.
    """
    rows, n = x2.shape
    if n == 0:
        return x2.new_zeros(2 * rows + 1)
    mean = x2.mean(dim=1)  # [rows]
    m2 = (x2 - mean[:, None]).square().sum(dim=1)  # [rows], centred: two passes over the shard
    return torch.cat([mean, m2, x2.new_full((1,), float(n))])


def merge_moments(gathered: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the ``[W, 2·rows + 1]`` moments of W shards into (mean [rows, 1], var [rows, 1], N [1]).

    Deterministic: every rank runs the same ops on the same gathered tensor, so every rank gets the same bits.
    """
    mean, m2, count = gathered[:, :rows], gathered[:, rows : 2 * rows], gathered[:, 2 * rows]  # [W, rows] ×2, [W]
    total = count.sum().reshape(1)  # [1]
    row_mean, row_m2 = moments.merge_moments(mean, m2, count)
    return row_mean[:, None], (row_m2 / total)[:, None], total
