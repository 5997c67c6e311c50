"""Launch configurations (tokennorm.kernels.config): consistent at every row length, and the long-row backward
split so that its float32 dγ/dβ partials stay a small fraction of the gradient's bytes."""

import torch

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import backward_config, forward_config


def test_default_configs_are_consistent():
    for n in (1, 7, 1024, 4096, 16384, 32768, 32769, 65536, 1 << 20):
        for cfg in (forward_config(n), backward_config(n)):
            assert cfg.block_n & (cfg.block_n - 1) == 0
            assert cfg.single_chunk == (cfg.block_n >= n)
            assert 1 <= cfg.num_warps <= 32 and cfg.num_warps & (cfg.num_warps - 1) == 0
            assert cfg.block_n >= 2  # no size-1 reduction axis (see config._tile)


def test_long_rows_backward_splits_into_segments_with_few_partial_rows(monkeypatch):
    """Rows longer than one tile: the default backward is segment sums → dx over few row groups × many
    segments, so the float32 dγ/dβ partials (one row per group) stay a small fraction of the gradient's
    bytes. One group per SM, as before the split, made them 2.7× the gradient's bytes at N = 1M (RESULTS.md)."""
    monkeypatch.setattr(kconfig, "sm_count", lambda device: 132)
    for n, m in ((16384, 8192), (65536, 2048), (262144, 512), (1 << 20, 128)):
        cfg = backward_config(n)
        assert not cfg.single_chunk and cfg.segments == n // cfg.block_n
        groups, rows_per_group = kconfig.backward_programs(m, torch.device("cuda"), cfg, cfg.segments)
        assert (groups - 1) * rows_per_group < m <= groups * rows_per_group  # every row in exactly one group
        assert groups * cfg.segments <= max(132 * kconfig.BWD_PROGRAMS_PER_SM_CHUNKED, cfg.segments)
        partial_bytes = 2 * 2 * groups * n * 4  # dγ and dβ, written then read, float32
        assert partial_bytes < 0.05 * 3 * m * n * 2  # vs reading h, dy and writing dx in bf16
