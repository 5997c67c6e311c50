"""Every kernel mode compiles for a Hopper GPU here, without one (Triton's compiler and bundled ptxas).

The interpreter runs the kernels' arithmetic in the other tests; this catches what only GPU code generation
sees (a math op lowered differently for a dtype, a layout or type error, atomics), and checks in the PTX what
the design claims: 16-byte loads and stores in the rows kernels, cp.async where the row loop prefetches,
atomics in the cooperative long-row kernels — and that each default config's persistent grid fits on an SM.
"""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile every mode")


def _run(*args):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compilable kernels, not interpreted
    proc = subprocess.run(
        [sys.executable, "-m", "tokennorm.tools.kernel_report.compile_check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this triton install has no ptxas")
    return proc


@pytest.mark.slow
def test_every_kernel_mode_compiles_for_sm90():
    proc = _run()
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert proc.returncode == 0 and lines and all(line.startswith("ok") for line in lines), proc.stdout + proc.stderr
    # bf16 rows forward and backward, LN and RMS, with and without prefetch: 16-byte loads (and stores, forward);
    # issue 18's bf16 kernels: AdaLN rows forward and backward (per-sample and per-token) for LN and RMS, DyT and
    # channels-first forward and backward
    assert sum("16-byte loads" in line for line in lines) == 8 + 6 + 4
    assert sum("16-byte stores" in line for line in lines) == 4 + 2 + 4
    # every prefetching rows kernel really is pipelined (cp.async): fwd and bwd, LN and RMS; AdaLN's, DyT's and
    # channels-first's with two stages too
    assert sum("cp.async" in line for line in lines) == 4 + 6 + 4
    # the cooperative long-row kernels take tickets and wait with atomics: 4 dtypes × fwd/bwd × LN/RMS, and AdaLN's
    assert sum("atomics" in line for line in lines) == 16 + 4


def test_default_configs_fit_their_persistent_grids():
    proc = _run("--configs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    # 9 row lengths × forward, backward; issue 18's: AdaLN and DyT at 2 widths × forward, backward, channels-first
    # at 5 widths × forward, backward (but the last: forward only)
    assert len(rows) == 18 + 4 + 4 + 9
    # regs, stack (no spills), fit/SM vs launched/SM
    for row in rows:
        assert int(row[6]) == 0, row
        assert row[9] == "–" or int(row[8]) >= int(row[9]), row
    four_k = next(r for r in rows if r[0] == "4096" and r[1] == "bwd")
    assert int(four_k[9]) >= 2  # the backward at N = 4K: at least two programs per SM, next row prefetched
