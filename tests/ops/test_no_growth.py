"""Nothing grows per call: 1,000 eager rounds of every public op, forward and backward, through the real Triton
launchers (a fake CUDA driver on CPU tensors, in a subprocess: tests/kernels/fake_gpu.py, check_no_growth)."""

import pytest


@pytest.mark.slow
def test_caches_tables_and_allocations_do_not_grow_per_call(fake_gpu):
    result = fake_gpu("no-growth")
    sizes = result["sizes"]
    # Asserted in the subprocess: every count the same after round 2 and after round 1,000; torch's side table
    # holds only the two kernels registered at import; Python allocations grew by < 256 KB in all.
    assert result["rounds"] == 1000 and sizes["torch kernel_side_table constant args"] == 0
    launches = {k: v for k, v in sizes.items() if k.startswith("tokennorm launch.") and k.endswith(" launches")}
    assert sum(launches.values()) > 0  # the cached path was taken
