"""Launch configurations (tokennorm.kernels.config): consistent at every row length, and the long-row backward
grouped so that its float32 dγ/dβ partials stay a small fraction of the gradient's bytes."""

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import LONG_ROWS, ROWS, SEGMENT, backward_config, forward_config


def test_default_configs_are_consistent():
    h100 = kconfig.DeviceFacts(sms=132, l2_bytes=50 << 20)
    for n in (1, 7, 100, 1024, 4096, 5120, 16384, 16385, 32768, 65536, 1 << 18, 1 << 20, 1 << 22):
        for cfg in (forward_config(n, 2, 4, h100), backward_config(n, 4, h100)):
            assert cfg.mode in kconfig.MODES
            assert cfg.block_n & (cfg.block_n - 1) == 0 and cfg.block_n >= 2  # no size-1 reduction axis
            assert 1 <= cfg.num_warps <= 32 and cfg.num_warps & (cfg.num_warps - 1) == 0
            assert (cfg.mode == ROWS) == (cfg.block_n >= n)
            if cfg.mode == LONG_ROWS:  # every program of a row resident at once (kernels/long_rows.py)
                assert kconfig.long_rows_segments(n, cfg) <= cfg.programs_per_sm * h100.sms
        assert forward_config(n, 2, 4, h100).mode != SEGMENT


def test_long_rows_backward_writes_few_partial_rows():
    """Rows longer than a backward tile: long-row groups of `segments` programs, one float32 partial row of dγ
    (and dβ) per group — a small fraction of the gradient's bytes at every length up to 1M."""
    from tokennorm.tools.kernel_report import traffic

    h100 = kconfig.DeviceFacts(sms=132, l2_bytes=50 << 20)
    for n, m in ((16384, 8192), (65536, 2048), (262144, 512), (1 << 20, 128)):
        cfg = backward_config(n, 4, h100)
        assert cfg.mode == LONG_ROWS
        groups = traffic.backward_programs(m, n, cfg, h100)
        assert groups * kconfig.long_rows_segments(n, cfg) <= 132
        partial_bytes = 2 * 2 * groups * n * 4  # dγ and dβ, written then read, float32
        assert partial_bytes < 0.05 * 3 * m * n * 2  # vs reading h, dy and writing dx in bf16
