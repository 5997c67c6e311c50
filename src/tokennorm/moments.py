"""Merging the moments of pieces of a row into the row's statistics (pure PyTorch, deterministic).

A row of N elements is cut into pieces of n_i elements (the shards of a tensor-parallel hidden dim; n_i may be
0). The long-row kernels merge a row's segments with the same formula inside the kernel
(``kernels.helpers.merge_moments``, each segment's mean passed as a hi + lo pair, which lifts the float32 limit
described below). Each piece contributes its mean m_i and centred sum of squares
M2_i = Σ(x − m_i)². The merge is Chan, Golub & LeVeque's parallel form, shifted by the mean of the largest
piece s so that the deviations are small numbers::

    d_i  = m_i − m_s
    δ    = Σ n_i d_i / N                 mean = m_s + δ
    M2   = Σ M2_i + Σ n_i (d_i − δ)²     var  = M2 / N   (biased)

Every term is built from centred values, so there is no E[x²] − E[x]² cancellation when |mean| ≫ std. What
remains: in float32 each piece mean is only known to about ulp(|mean|), and the between-piece term is linear
in that, so the merged variance is good to ~ulp(|mean|)·σ — the same order as the rounding of x − mean that
any float32 LayerNorm, torch's included, applies to every element.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["merge_moments"]


def merge_moments(mean: Tensor, m2: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the moments of W pieces: ``mean``, ``m2`` [W, rows], ``count`` [W] → (mean, M2), each [rows]."""
    total = count.sum()
    # The piece whose mean is the shift, picked on the device (no .item(): no host sync, graph-capturable).
    largest = count.argmax().reshape(1, 1).expand(1, mean.shape[1])  # [1, rows]
    shift = mean.gather(0, largest)  # [1, rows]
    d = mean - shift  # [W, rows]
    weights = count[:, None]  # [W, 1]
    delta = (weights * d).sum(dim=0) / total  # [rows]
    row_m2 = m2.sum(dim=0) + (weights * (d - delta).square()).sum(dim=0)  # [rows]
    return shift[0] + delta, row_m2
