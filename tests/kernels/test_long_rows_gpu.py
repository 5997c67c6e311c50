"""The cooperative long-row kernels on a GPU: the programs of a row run at the same time and exchange their
segments' partials through global memory (kernels/long_rows.py). Triton's interpreter runs programs one after
another, so there the same kernels run as two launches (tested everywhere else); these tests run the one-launch
form, with its tickets, counters and spin-waits, against the two-launch form and float64.

Race check of the exchange (shared and global memory hazards), as the GPU script runs it:

    compute-sanitizer --tool racecheck --racecheck-report hazard python3 -m pytest -q -x \
        tests/kernels/test_long_rows_gpu.py -k "racecheck"
"""

from __future__ import annotations

import pytest
import torch

from tokennorm import reference
from tokennorm.kernels import launch
from tokennorm.kernels.config import LONG_ROWS, KernelConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def _both_exchanges(monkeypatch, run):
    """``run()`` with the cooperative launch, then with the two launches the interpreter uses."""
    assert launch.LONG_ROWS_EXCHANGE == "cooperative"
    first = run()
    monkeypatch.setattr(launch, "LONG_ROWS_EXCHANGE", "two-launch")
    second = run()
    monkeypatch.setattr(launch, "LONG_ROWS_EXCHANGE", "cooperative")
    return first, second


@pytest.mark.parametrize("n,m", [(16384, 300), (65536, 64), (1 << 20, 8), (100_003, 5)])
@pytest.mark.parametrize("is_rms", [False, True], ids=["ln", "rms"])
def test_cooperative_long_rows_match_two_launches_bit_for_bit(monkeypatch, n, m, is_rms):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(m, n, device="cuda", generator=g, dtype=torch.bfloat16) * 3 + 1
    w = torch.randn(n, device="cuda", generator=g, dtype=torch.bfloat16)
    b = None if is_rms else torch.randn(n, device="cuda", generator=g, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    fwd_cfg, bwd_cfg = KernelConfig(LONG_ROWS, 16384, 16), KernelConfig(LONG_ROWS, 8192, 16)

    def run():
        f = launch.norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, is_rms, None, config=fwd_cfg)
        d = launch.norm_backward(
            dy, x, w, f.mean, f.rstd, None, None, 0.0, 0.0, is_rms, True, not is_rms, x.dtype, None, config=bwd_cfg
        )
        return (*f, *d)

    coop, two = _both_exchanges(monkeypatch, run)
    for a, e in zip(coop, two):
        assert (a is None and e is None) or torch.equal(a, e)  # same arithmetic, same order
    x64 = x[:2].double().cpu()
    ref = (
        reference.rms_norm(x64, (n,), w.double().cpu(), 1e-5)
        if is_rms
        else reference.layer_norm(x64, (n,), w.double().cpu(), b.double().cpu(), 1e-5)
    )
    torch.testing.assert_close(coop[0][:2].double().cpu(), ref, atol=6e-2, rtol=0)


def test_cooperative_add_norm_with_dropout_and_stored_h(monkeypatch):
    n, m = 50_000, 33
    x = torch.randn(m, n, device="cuda")
    r = torch.randn(m, n, device="cuda")
    w = torch.randn(n, device="cuda")
    seed = torch.tensor([7], device="cuda")
    cfg = KernelConfig(LONG_ROWS, 16384, 16)
    run = lambda: launch.norm_forward(x, w, None, r, seed, 1e-5, 0.1, 0.0, False, torch.float32, config=cfg)  # noqa
    coop, two = _both_exchanges(monkeypatch, run)
    for a, e in zip(coop, two):
        assert torch.equal(a, e)
    whole = launch.norm_forward(
        x, w, None, r, seed, 1e-5, 0.1, 0.0, False, torch.float32, config=KernelConfig("chunked", 8192, 16)
    )
    assert torch.equal(coop.h, whole.h)
    torch.testing.assert_close(coop.y, whole.y, atol=1e-5, rtol=0)


def test_concurrent_launches_on_two_streams_finish(monkeypatch):
    """Two cooperative launches at once, each row taking a quarter of the machine: tickets keep every waiting
    program's partners started (a program id would not: kernels/long_rows.py)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = 16384 * max(1, sms // 4)
    xs = [torch.randn(64, n, device="cuda") for _ in range(2)]
    cfg = KernelConfig(LONG_ROWS, 16384, 16)
    streams = [torch.cuda.Stream() for _ in range(2)]
    outs = []
    for _ in range(3):
        for x, s in zip(xs, streams):
            with torch.cuda.stream(s):
                outs.append(launch.norm_forward(x, None, None, None, None, 1e-5, 0.0, 0.0, False, None, config=cfg))
    torch.cuda.synchronize()
    ref = torch.nn.functional.layer_norm(xs[0], (n,))
    torch.testing.assert_close(outs[0].y, ref, atol=1e-4, rtol=0)
    assert torch.equal(outs[0].y, outs[2].y)


def test_cuda_graph_replays_reset_the_counters():
    n, m = 65536, 16
    x = torch.randn(m, n, device="cuda")
    cfg = KernelConfig(LONG_ROWS, 16384, 16)
    run = lambda: launch.norm_forward(x, None, None, None, None, 1e-5, 0.0, 0.0, False, None, config=cfg)  # noqa
    eager = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out.y, eager.y)


def test_racecheck_small_long_row_launch():
    """The smallest cooperative launches (forward and backward): the case the racecheck command runs."""
    n, m = 40_000, 3
    x = torch.randn(m, n, device="cuda")
    w = torch.randn(n, device="cuda")
    f = launch.norm_forward(
        x, w, None, None, None, 1e-5, 0.0, 0.0, False, None, config=KernelConfig(LONG_ROWS, 16384, 16)
    )
    d = launch.norm_backward(
        torch.ones_like(x),
        x,
        w,
        f.mean,
        f.rstd,
        None,
        None,
        0.0,
        0.0,
        False,
        True,
        False,
        x.dtype,
        None,
        config=KernelConfig(LONG_ROWS, 8192, 16),
    )
    torch.cuda.synchronize()
    ref = torch.nn.functional.layer_norm(x, (n,), w)
    torch.testing.assert_close(f.y, ref, atol=1e-4, rtol=0)
    assert torch.isfinite(d.dx).all()
