"""The HBM traffic model of the launch plans (tokennorm.kernels.traffic), checked against hand counts and
against the H100 run it was built to explain."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokennorm.kernels import config as kconfig
from tokennorm.kernels import traffic
from tokennorm.kernels.config import TileConfig

RUN = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "results" / "h100-2026-11-23"


def test_whole_row_plans_move_the_fewest_bytes_plus_small_terms():
    m, n, s = 32768, 4096, 2
    tile = TileConfig(4, 4096, True, 8)
    assert traffic.forward_bytes(m, n, s, tile, store_stats=False) == 2 * m * n * s
    # read h, dy; write dx; read mean, rstd; 528 partial rows of dγ and dβ in float32, written and read back
    assert traffic.backward_bytes(m, n, s, tile, 528, True) == 3 * m * n * s + 2 * m * 4 + 2 * 528 * n * 4 * 2


def test_long_row_plans_read_the_input_twice():
    m, n, s = 128, 1 << 20, 2
    chunked = TileConfig(1, 16384, False, 16)
    assert traffic.forward_bytes(m, n, s, chunked, store_stats=False) == 3 * m * n * s
    # one row group per row, as the grid was on 2026-11-23: partials as large as the gradient, twice over
    moved = traffic.backward_bytes(m, n, s, chunked, 128, True)
    assert moved == 5 * m * n * s + 2 * m * 4 + 2 * 128 * n * 4 * 2
    assert moved / (3 * m * n * s) == pytest.approx(13 / 3, rel=1e-3)
    split = TileConfig(1, 16384, False, 16, segments=64)
    assert traffic.row_segments(n, split) == 64
    assert traffic.row_segments(n, TileConfig(1, 16384, False, 16, segments=3)) == 3  # 3 segments of 24 chunks


def test_the_default_backward_moves_under_two_times_the_bytes_it_needs_at_every_length():
    for n in (1024, 4096, 16384, 65536, 262144, 1 << 20):
        m = (1 << 27) // n
        for has_bias in (True, False):
            _, _, moved = traffic.default_backward_bytes(m, n, 2, 132, has_bias)
            assert moved < (1.06 if n <= kconfig.BWD_MAX_SINGLE_CHUNK_N else 1.75) * 3 * m * n * 2


@pytest.mark.skipif(not (RUN / "tune_ln.json").exists(), reason="recorded H100 run not in this checkout")
def test_the_recorded_long_row_backward_ran_near_copy_speed_on_the_bytes_it_moved():
    """The finding in benchmarks/RESULTS.md: chunked backward candidates were slow because of the bytes they
    moved (second pass, partials), not because they moved them slowly."""
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
    assert "Today's default backward" in out
