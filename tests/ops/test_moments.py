"""tokennorm.moments: the merge of row pieces' moments (long-row kernels, tensor-parallel shards).

Checked against float64 two-pass statistics of the whole rows, on pieces of random, uneven, sometimes empty
sizes, including rows whose mean is 10⁴ standard deviations from 0 (where E[x²] − E[x]² loses everything).
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokennorm.moments import merge_moments


def _pieces_moments(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per piece: mean and centred sum of squares, computed in x's dtype (two passes), zeros when empty."""
    means, m2s = [], []
    for piece in x.split(sizes, dim=1):
        if piece.shape[1] == 0:
            means.append(x.new_zeros(x.shape[0]))
            m2s.append(x.new_zeros(x.shape[0]))
            continue
        mean = piece.mean(dim=1)
        means.append(mean)
        m2s.append((piece - mean[:, None]).square().sum(dim=1))
    return torch.stack(means), torch.stack(m2s), torch.tensor(sizes, dtype=x.dtype)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda s: sum(s) > 0),
    rows=st.integers(1, 4),
    shift=st.sampled_from([0.0, 3.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_merge_equals_whole_row_statistics(sizes, rows, shift, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, sum(sizes), generator=g) + shift  # float32, std 1
    mean, m2 = merge_moments(*_pieces_moments(x, sizes))
    exact_var, exact_mean = torch.var_mean(x.double(), dim=1, correction=0)
    n = sum(sizes)
    # float32 roundoff of O(n) operations on values of size |shift| + 1, against the float64 statistics
    scale = 1.0 + abs(shift)
    assert (mean.double() - exact_mean).abs().max() <= 1e-6 * scale
    # A float32 piece mean near |shift| is only known to about one ulp there, and the between-piece term
    # Σ n_i (d_i − δ)² is linear in that error: |Δvar| ≲ 2 · ulp(|shift|) · σ, plus ordinary roundoff.
    ulp = torch.finfo(torch.float32).eps * scale
    tol = 1e-5 * (1.0 + exact_var.max()) + 4 * ulp * exact_var.max().sqrt()
    assert (m2.double() / n - exact_var).abs().max() <= tol
    # E[x²] − E[x]² in float32 is hopeless at shift 1e4 (|x|² ~ 1e8, ulp ~ 8): the merge must not be that.
    if shift == 1e4 and n >= 8:
        naive = (x.square().mean(1) - x.mean(1).square()).double()
        assert (m2.double() / n - exact_var).abs().max() * 100 < (naive - exact_var).abs().max() + 1.0
