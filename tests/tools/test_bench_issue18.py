"""``tokennorm bench`` on issue 18's ops (AdaLN-Zero, DyT, Add & DyT, channels-first LayerNorm): each
implementation's output is checked against torch's composition before it is timed — tokennorm on both backends
passes, a wrong modulation does not. Speed itself is never asserted."""

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm.tools.bench.cases import ISSUE18_OPS, Sweep
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS, Impl, _issue18
from tokennorm.tools.bench.runner import run_sweep
from tokennorm.tools.bench.timing import Budget

TINY_BUDGET = Budget(rounds=3, warmup_calls=1, sample_seconds=0.0, min_calls=1, max_calls=1, host_burst_calls=2)
OPS = tuple(op.key for op in ISSUE18_OPS)


def _sweep():
    return Sweep(OPS, ("fwd", "fwdbwd"), (torch.float32,), (32,), mn=32 * 16)  # M = 16: one AdaLN sample, one image


def test_every_op_runs_checked_on_the_torch_backend(torch_backend):
    result = run_sweep(_sweep(), [IMPLEMENTATIONS["tokennorm"], IMPLEMENTATIONS["torch"]], "cpu", TINY_BUDGET)
    timed = {(r.impl, r.op, r.direction, r.dtype) for r in result.results}
    assert len(timed) == 2 * len(OPS) * 2, result.notes


@pytest.mark.interpret
def test_the_triton_path_passes_the_output_check(triton_backend):
    result = run_sweep(
        Sweep(OPS, ("fwd",), (torch.float32,), (32,), mn=32 * 16), [IMPLEMENTATIONS["tokennorm"]], "cpu", TINY_BUDGET
    )
    assert {r.op for r in result.results} == set(OPS), result.notes


def test_a_wrong_modulation_is_not_timed(torch_backend):
    def scale_without_one(case):  # y = Norm(h)·scale + shift: the classic AdaLN slip
        def adaln(x, r, shift, scale, gate):
            y, h = tokennorm.ada_norm(x, shift, scale - 1, gate=gate, residual=r, eps=1e-6, prenorm=True)
            return y, h

        return _issue18(case, adaln, None, None, None)

    sweep = Sweep(("adaln",), ("fwd",), (torch.float32,), (32,), mn=32 * 16)
    result = run_sweep(sweep, [Impl("wrong", scale_without_one), IMPLEMENTATIONS["tokennorm"]], "cpu", TINY_BUDGET)
    assert [r.impl for r in result.results] == ["tokennorm"]
    assert any(n.startswith("wrong: wrong output: max |y − torch|") for n in result.notes), result.notes


def test_the_torch_baselines_are_the_compositions_users_write(torch_backend):
    """torch's AdaLN-Zero step is DiT's modulate(norm(r + gate·x)); its channels-first LN permutes around
    F.layer_norm and stores the result channels first."""
    from tokennorm.tools.bench.cases import OPS as ALL
    from tokennorm.tools.bench.cases import Case

    case = Case(ALL["cfln"], "fwd", torch.float32, 16, 8)
    x, w, b = torch.randn(16, 8), torch.randn(8), torch.randn(8)
    y = IMPLEMENTATIONS["torch"].build(case)(x, None, w, b)
    image = x.view(1, 8, 16)
    want = F.layer_norm(image.permute(0, 2, 1), (8,), w, b, 1e-5).permute(0, 2, 1).reshape(16, 8)
    assert torch.equal(y, want) and y.is_contiguous()
