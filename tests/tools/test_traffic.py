"""The HBM traffic model of the launch plans (tokennorm.tools.kernel_report.traffic), checked against hand counts, the
targets of the kernels' design (bytes moved ≤ 1.02× / 1.05× the bytes needed), and the H100 run of the first
kernels it was built to explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, ROWS, SEGMENT, KernelConfig
from tokennorm.tools.kernel_report import traffic

RUN = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "results" / "h100-2026-11-23"


def test_rows_plans_move_the_fewest_bytes_plus_small_terms():
    m, n, s = 32768, 4096, 2
    tile = KernelConfig(ROWS, 4096, 8, programs_per_sm=2)
    assert traffic.forward_bytes(m, n, s, tile, store_stats=False) == 2 * m * n * s
    # read h, dy; write dx; read mean, rstd; 263 partial rows of dγ and dβ in float32 (2 × 132 programs asked
    # for, 125 rows each), written and read back
    assert traffic.backward_programs(m, n, tile) == 263
    assert traffic.backward_bytes(m, n, s, tile) == 3 * m * n * s + 2 * m * 4 + 2 * 263 * n * 4 * 2


def test_chunked_forward_reads_twice_from_hbm_only_when_the_rows_in_flight_overflow_l2():
    chunked = KernelConfig(CHUNKED, 8192, 16)
    m, s = 16, 2
    small_l2 = kconfig.DeviceFacts(sms=132, l2_bytes=8 << 20)
    for n, facts, reads in ((65536, traffic.H100, 1), (65536, small_l2, 2), (262144, traffic.H100, 2)):
        assert traffic.forward_bytes(m, n, s, chunked, facts, store_stats=False) == (reads + 1) * m * n * s


def test_long_rows_add_only_their_exchanged_partials():
    m, n, s = 128, 1 << 20, 2
    cfg = KernelConfig(LONG_ROWS, 16384, 16)
    partials = 2 * m * 64 * 3 * 4 + 2 * (1 + m) * 4  # 64 segments' (mean hi, lo, M2), written and read; counters
    assert traffic.forward_bytes(m, n, s, cfg, store_stats=False) == 2 * m * n * s + partials
    bwd = KernelConfig(LONG_ROWS, 8192, 16)
    assert traffic.backward_programs(m, n, bwd) == 1  # 128 segments: one row group fills an H100
    sums = 2 * m * 128 * 2 * 4 + 2 * (1 + m) * 4
    assert traffic.backward_bytes(m, n, s, bwd) == 3 * m * n * s + 2 * m * 4 + 2 * n * 4 * 2 + sums


def test_segment_backward_reads_the_input_twice():
    m, n, s = 32, 1 << 22, 2
    cfg = KernelConfig(SEGMENT, 8192, 16)
    moved = traffic.backward_bytes(m, n, s, cfg)
    assert moved > 5 * m * n * s


@pytest.mark.parametrize("facts", [traffic.H100, traffic.H200], ids=["H100", "H200"])
@pytest.mark.parametrize("itemsize", [2, 4], ids=["bf16", "fp32"])
def test_default_plans_move_at_most_2_and_5_percent_more_than_needed_up_to_1m(facts, itemsize):
    """The kernels' target: forward ≤ 1.02×, backward ≤ 1.05× the bytes the op needs, every N up to 1M."""
    for k in range(7, 21):
        for n in (1 << k, 3 << (k - 1)):
            if n > 1 << 20:
                continue
            m = max(1, (1 << 27) // n)
            fwd, f_bytes, bwd, b_bytes = traffic.default_bytes(m, n, itemsize, facts)
            assert f_bytes <= 1.02 * 2 * m * n * itemsize, (n, fwd)
            assert b_bytes <= 1.05 * 3 * m * n * itemsize, (n, bwd)
            assert bwd.mode != SEGMENT and (fwd.mode != CHUNKED or kconfig.chunked_fits_l2(n, itemsize, fwd, facts))


def test_a_smaller_gpu_falls_back_to_two_reads_beyond_its_capacity():
    """Rows whose segments outnumber the resident programs (here 40 SMs) must not take the long-row kernel."""
    small = kconfig.DeviceFacts(sms=40, l2_bytes=20 << 20)
    assert kconfig.backward_config(1 << 20, 4, small).mode == SEGMENT
    assert kconfig.forward_config(1 << 21, 2, 4, small).mode == CHUNKED


@pytest.mark.skipif(not (RUN / "tune_ln.json").exists(), reason="recorded H100 run not in this checkout")
def test_the_recorded_long_row_backward_ran_near_copy_speed_on_the_bytes_it_moved():
    """The finding in benchmarks/RESULTS.md about the first kernels: chunked backward candidates were slow
    because of the bytes they moved (second pass, partials), not because they moved them slowly."""
    import json

    with open(RUN / "tune_ln.json") as f:
        rows = traffic.analyse(json.load(f), sms=132, has_bias=True, itemsize=2)  # not recorded then
    at_1m = [r for r in rows if r["n"] == 1 << 20 and r["dir"] == "bwd"]
    assert at_1m and all(r["needed_frac"] < 0.25 and r["moved_per_needed"] > 4 for r in at_1m)
    assert max(r["moved_frac"] for r in at_1m) > 0.9


def test_cli_prints_both_tables(capsys):
    if not (RUN / "tune_rms.json").exists():
        pytest.skip("recorded H100 run not in this checkout")
    assert traffic.main([str(RUN / "tune_rms.json"), "--best"]) == 0
    out = capsys.readouterr().out
    assert "| tune_rms.json | bwd | 1,048,576 | 128 |" in out and "| tune_rms.json | fwd | 1,048,576 | 128 |" in out
    assert "| 1,048,576 | 128 | long_rows 1×16384, 16 warps, 1/SM | 1.000 | long_rows 1×8192, 16 warps, 1/SM |" in out


def test_command_without_a_run_prints_the_default_plans(capsys):
    assert traffic.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|") for line in lines[2:]]
    assert len(rows) == 2 * len(traffic.DEFAULT_PLAN_NS)
    for row in rows:  # the targets: forward ≤ 1.02 and backward ≤ 1.05 of the bytes needed
        assert float(row[5]) <= 1.02 and float(row[7]) <= 1.05, row
