"""Sequence parallelism with issue 18's modules: DyT, AddDyT and AdaLNZero hold replicated parameters whose
gradients sum over tokens, so ``allreduce_norm_grads`` must reduce them — two gloo ranks, each with half of every
sample's tokens (the conditioning replicated), give the one-process gradients after it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import tokennorm
from tokennorm.distributed import sequence_parallel as sp

WORLD, D, COND, TOKENS = 2, 8, 4, (3, 2)  # rank r holds TOKENS[r] tokens of every sample


class _ConditionedBlock(nn.Module):
    """A DiT-style step: AdaLN-Zero modulation and gated residual, then DyT and Add & DyT."""

    def __init__(self) -> None:
        super().__init__()
        self.adaln = tokennorm.AdaLNZero(D, COND)
        self.fc = nn.Linear(D, D)
        self.dyt = tokennorm.DyT(D)
        self.add = tokennorm.AddDyT(D, "pre")

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        m1, m2 = self.adaln(cond)
        y = self.adaln.normalize(x, m1)
        y, h = self.adaln.normalize(self.fc(y), m2, gate=m1.gate, residual=x, prenorm=True)
        z, h = self.add(self.dyt(y), h)
        return z + h


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = _ConditionedBlock()
    with torch.no_grad():  # AdaLN-Zero starts at zero: perturb every parameter so each gradient is non-trivial
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    return model


def _data():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, sum(TOKENS), D, generator=g),
        torch.randn(2, COND, generator=g),
        torch.randn(2, sum(TOKENS), D, generator=g),
    )


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
        )
        model = _model()
        x, cond, c = _data()
        lo = sum(TOKENS[:rank])
        tokens = slice(lo, lo + TOKENS[rank])
        (model(x[:, tokens], cond) * c[:, tokens]).sum().backward()
        reduced = sp.allreduce_norm_grads(model)
        result = {"reduced": reduced, "grads": {n: p.grad.tolist() for n, p in model.named_parameters()}}
    except Exception:
        result = {"error": traceback.format_exc()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_issue18_modules_are_norms_for_the_reduction():
    names = [name for name, _ in sp.norm_parameters(_ConditionedBlock())]
    assert names == [
        "adaln.linear.weight",
        "adaln.linear.bias",
        "dyt.alpha",
        "dyt.weight",
        "dyt.bias",
        "add.alpha",
        "add.weight",
        "add.bias",
    ]


def test_sequence_parallel_gradients_equal_one_process(tmp_path):
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(r, str(tmp_path / "store"), str(tmp_path)), daemon=True) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r.get("error")
    single = _model()
    x, cond, c = _data()
    (single(x, cond) * c).sum().backward()
    for name, p in single.named_parameters():
        if name.startswith("fc"):  # not a norm: each rank keeps its own tokens' gradient
            continue
        for r in results:
            assert r["reduced"] == 8
            torch.testing.assert_close(torch.tensor(r["grads"][name]), p.grad, rtol=1e-5, atol=1e-5, msg=name)
