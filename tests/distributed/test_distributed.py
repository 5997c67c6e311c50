"""tokennorm.distributed on several processes (gloo, CPU): tensor parallel, DTensor, sequence parallel, FSDP2.

One group of 4 processes runs every check below (forked, not spawned: the children inherit the imported torch
and tokennorm, so start-up takes milliseconds instead of ~10 s of imports per rank). 2-rank cases run on the
subgroups {0, 1} and {2, 3} of that world, 4-rank cases on the world. Each check runs on every rank; its test
passes when it passed on all 4. Results come back as one JSON file per rank, rewritten after every check, so
a hang or crash still reports what finished. Everything is compared with a single-process reference:
tokennorm.reference in float64 (an independent, hand-written backward), or the same model in one process.
"""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import re
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.testing import assert_close

import tokennorm
import tokennorm.distributed as td
from tokennorm import reference as ref

WORLD = 4
DEADLINE_S = 90  # the whole group; a check that hangs is reported as unfinished
COLLECTIVE_TIMEOUT_S = 30  # gloo's own timeout: a desynchronised collective fails instead of hanging
# slow: every test shares one group of WORLD processes, whose start and run take ~4 s
pytestmark = [pytest.mark.timeout(DEADLINE_S + 30), pytest.mark.slow]

# fp32 math on rows of <= 64 elements vs float64: a few fp32 ulps on values of order 1-10.
FP32 = dict(rtol=1e-5, atol=1e-5)
# bf16 results are fp32 math rounded once to bf16 (relative step 2^-8..2^-7); the reference rounds the same
# way, so the two differ by at most one bf16 ulp.
BF16 = dict(rtol=1.6e-2, atol=1e-2)

CHECKS: dict[str, Callable[["Ctx"], None]] = {}


def check(fn: Callable[["Ctx"], None]) -> Callable[["Ctx"], None]:
    CHECKS[fn.__name__] = fn
    return fn


@dataclass
class Ctx:
    rank: int
    pair: dist.ProcessGroup  # {0, 1} or {2, 3}, whichever holds this rank
    pair_rank: int
    pair_id: int
    dup_a: dist.ProcessGroup  # two distinct groups over {0, 1}, used only to mismatch groups on purpose
    dup_b: dist.ProcessGroup
    mesh1d: object  # the world as a 1-D DeviceMesh
    mesh2d: object  # 2 x 2: ("dp", "tp")


# ---------------------------------------------------------------------------------------------- helpers


def _randn(shape, seed: int, dtype=torch.float32, shift: float = 0.0) -> torch.Tensor:
    """The same tensor on every rank (seeded), for the full, unsharded problem."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) + shift).to(dtype)


def _slice(t: torch.Tensor, sizes, index: int) -> torch.Tensor:
    """Shard ``index`` of ``t``'s last dim split into ``sizes``, as a fresh leaf that may require grad."""
    start = sum(sizes[:index])
    return t[..., start : start + sizes[index]].detach().clone().requires_grad_(t.requires_grad)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _expect_error(exc: type, pattern: str, call: Callable[[], object]) -> None:
    try:
        call()
    except exc as err:
        assert re.search(pattern, str(err)), f"{exc.__name__} raised, but its message does not match {pattern!r}: {err}"
        return
    raise AssertionError(f"expected {exc.__name__} matching {pattern!r}, but nothing was raised")


def _layouts(ctx: Ctx):
    """(group, group rank, shard sizes) cases: the world with uneven and empty shards, and this rank's pair."""
    pair_sizes = ((3, 5), (7, 1))[ctx.pair_id]
    return [(None, ctx.rank, (3, 1, 4, 2)), (None, ctx.rank, (5, 0, 2, 3)), (ctx.pair, ctx.pair_rank, pair_sizes)]


# ------------------------------------------------------------------------------------ tensor parallel


def _check_norm(ctx: Ctx, is_rms: bool, dtype: torch.dtype, tol: dict, affine: bool, eps) -> None:
    for case, (group, index, sizes) in enumerate(_layouts(ctx)):
        n = sum(sizes)
        x = _randn((2, 3, n), 10 + case, dtype, shift=0.5).requires_grad_()
        w = _randn((n,), 20 + case, dtype, shift=1.0).requires_grad_() if affine else None
        b = _randn((n,), 30 + case, dtype).requires_grad_() if affine and not is_rms else None
        dy = _randn((2, 3, n), 40 + case, dtype)
        xs = _slice(x, sizes, index)
        ws = None if w is None else _slice(w, sizes, index)
        bs = None if b is None else _slice(b, sizes, index)
        if is_rms:
            ys = td.sharded_rms_norm(xs, ws, eps, group, full_size=n)
            want_y = ref.rms_norm(x.detach(), (n,), w, eps)
            want = ref.rms_norm_backward(dy, x.detach(), (n,), None if w is None else w.detach(), eps)
        else:
            ys = td.sharded_layer_norm(xs, ws, bs, eps, group, full_size=n)
            want_y = ref.layer_norm(x.detach(), (n,), w, b, eps)
            want = ref.layer_norm_backward(
                dy, x.detach(), (n,), None if w is None else w.detach(), None if b is None else b.detach(), eps
            )
        ys.backward(_slice(dy, sizes, index))
        assert ys.dtype == dtype and ys.shape == xs.shape
        assert_close(ys, _slice(want_y.detach(), sizes, index), **tol)
        assert_close(xs.grad, _slice(want.dx, sizes, index), **tol)
        if affine:
            assert_close(ws.grad, _slice(want.dweight, sizes, index), **tol)
        if bs is not None:
            assert_close(bs.grad, _slice(want.dbias, sizes, index), **tol)


@check
def tp_layer_norm_fp32(ctx: Ctx) -> None:
    _check_norm(ctx, is_rms=False, dtype=torch.float32, tol=FP32, affine=True, eps=1e-5)
    _check_norm(ctx, is_rms=False, dtype=torch.float32, tol=FP32, affine=False, eps=1e-3)


@check
def tp_norms_triton_local_kernels(ctx: Ctx) -> None:
    """The Triton path for the local work (moments kernel → collective → normalize kernel; here under Triton's
    interpreter on the CPU): same results as the reference, fp32 and bf16, uneven and empty shards."""
    with tokennorm.using_backend("triton"):
        _check_norm(ctx, is_rms=False, dtype=torch.float32, tol=FP32, affine=True, eps=1e-5)
        _check_norm(ctx, is_rms=True, dtype=torch.float32, tol=FP32, affine=True, eps=None)
        _check_norm(ctx, is_rms=False, dtype=torch.bfloat16, tol=BF16, affine=True, eps=1e-5)
        tokennorm_dtype_check = td.sharded_layer_norm(
            torch.randn(3, 2 + ctx.rank, dtype=torch.bfloat16), torch.ones(2 + ctx.rank), full_size=14
        )
        assert tokennorm_dtype_check.dtype == torch.bfloat16  # bf16 input, fp32 γ: output in the input's dtype
        sizes, n = (5, 0, 7, 4), 16  # one rank holds nothing
        x = _randn((6, n), 51, torch.float32, shift=2.0)
        exact = ref.layer_norm(x.double(), (n,))
        assert_close(
            td.sharded_layer_norm(_slice(x, sizes, ctx.rank), full_size=n).double(),
            _slice(exact, sizes, ctx.rank),
            **FP32,
        )


@check
def tp_no_tokens(ctx: Ctx) -> None:
    """An empty batch gives empty outputs and gradients, and keeps the group in step."""
    for norm in (td.sharded_layer_norm, td.sharded_rms_norm):
        xs = torch.empty(0, 4, 2 + ctx.rank, requires_grad=True)
        ys = norm(xs, torch.ones(2 + ctx.rank, requires_grad=True))
        ys.sum().backward()
        assert ys.shape == xs.shape and xs.grad.shape == xs.shape


@check
def tp_rms_norm_fp32(ctx: Ctx) -> None:
    _check_norm(ctx, is_rms=True, dtype=torch.float32, tol=FP32, affine=True, eps=None)
    _check_norm(ctx, is_rms=True, dtype=torch.float32, tol=FP32, affine=False, eps=1e-6)


@check
def tp_norms_bf16(ctx: Ctx) -> None:
    _check_norm(ctx, is_rms=False, dtype=torch.bfloat16, tol=BF16, affine=True, eps=1e-5)
    _check_norm(ctx, is_rms=True, dtype=torch.bfloat16, tol=BF16, affine=True, eps=None)


@check
def tp_layer_norm_large_mean(ctx: Ctx) -> None:
    """|mean| >> std: the merge must stay as accurate as torch's own LayerNorm, where E[x²] − E[x]² fails."""
    sizes, n = (20, 12, 17, 15), 64
    x = _randn((8, n), 50, torch.float32, shift=3e3)
    exact = ref.layer_norm(x.double(), (n,))
    ours = td.sharded_layer_norm(_slice(x, sizes, ctx.rank), full_size=n)
    err_ours = (ours.double() - _slice(exact, sizes, ctx.rank)).abs().max().item()
    err_torch = (F.layer_norm(x, (n,)).double() - exact).abs().max().item()
    naive_var = (x.square().mean(-1, keepdim=True) - x.mean(-1, keepdim=True).square()).clamp_min(0)
    naive = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(naive_var + 1e-5)
    err_naive = (naive.double() - exact).abs().max().item()
    assert err_ours <= 2 * err_torch + 1e-4, (err_ours, err_torch)
    assert err_naive > 100 * (2 * err_torch + 1e-4), f"the data is too easy to tell the merges apart: {err_naive}"


def _check_add_norm(ctx: Ctx, norm: str, prenorm: bool, x_dtype, residual_dtype, offset: float, bias: bool) -> None:
    for case, (group, index, sizes) in enumerate(_layouts(ctx)):
        n = sum(sizes)
        r_dtype = residual_dtype or x_dtype
        x = _randn((5, n), 60 + case, x_dtype).requires_grad_()
        res = _randn((5, n), 70 + case, r_dtype, shift=1.0).requires_grad_()
        w = _randn((n,), 80 + case, shift=0.5).requires_grad_()
        b = _randn((n,), 90 + case).requires_grad_() if bias else None
        dy, dh = _randn((5, n), 100 + case, x_dtype), _randn((5, n), 110 + case, r_dtype)
        xs, rs, ws = _slice(x, sizes, index), _slice(res, sizes, index), _slice(w, sizes, index)
        bs = None if b is None else _slice(b, sizes, index)
        out = td.sharded_add_norm(
            xs,
            rs,
            ws,
            bs,
            None,
            group,
            n,
            norm=norm,
            prenorm=prenorm,
            residual_dtype=residual_dtype,
            weight_offset=offset,
        )
        ys, hs = out if prenorm else (out, None)
        want_y, want_h = ref.add_norm(
            x.detach(),
            res.detach(),
            (n,),
            w.detach(),
            None if b is None else b.detach(),
            None,
            norm=norm,
            residual_dtype=residual_dtype,
            weight_offset=offset,
        )
        loss = (ys.float() * _slice(dy, sizes, index).float()).sum()
        if prenorm:
            loss = loss + (hs.float() * _slice(dh, sizes, index).float()).sum()
        loss.backward()
        want = ref.add_norm_backward(
            dy,
            dh if prenorm else None,
            want_h,
            x.detach(),
            res.detach(),
            (n,),
            w.detach(),
            None if b is None else b.detach(),
            None,
            norm=norm,
            weight_offset=offset,
        )
        tol = FP32 if x_dtype == torch.float32 else BF16
        assert_close(ys, _slice(want_y, sizes, index), **tol)
        if prenorm:
            assert hs.dtype == r_dtype
            assert_close(hs, _slice(want_h, sizes, index), **tol)
        assert_close(xs.grad, _slice(want.dx, sizes, index), **tol)
        assert_close(rs.grad, _slice(want.dresidual, sizes, index), **tol)
        assert_close(ws.grad, _slice(want.dweight, sizes, index), **FP32)
        if bias:
            assert_close(bs.grad, _slice(want.dbias, sizes, index), **FP32)


@check
def tp_add_norm(ctx: Ctx) -> None:
    _check_add_norm(ctx, "layernorm", prenorm=False, x_dtype=torch.float32, residual_dtype=None, offset=0.0, bias=True)
    _check_add_norm(ctx, "rmsnorm", prenorm=True, x_dtype=torch.float32, residual_dtype=None, offset=1.0, bias=True)
    _check_add_norm(
        ctx, "layernorm", prenorm=True, x_dtype=torch.bfloat16, residual_dtype=torch.float32, offset=0.0, bias=False
    )


@check
def tp_modules_match_dense(ctx: Ctx) -> None:
    """Sharded modules built from whole ones give the whole module's output and parameter gradients, sliced."""
    n = 10
    x = _randn((3, 4, n), 120, shift=-0.3)
    dy = _randn((3, 4, n), 121)
    ln = nn.LayerNorm(n, eps=1e-4)
    rms = nn.RMSNorm(n)
    add = tokennorm.AddNorm(n, norm="rmsnorm", placement="pre", weight_offset=1.0)
    with torch.no_grad():
        for p in [*ln.parameters(), *rms.parameters(), *add.parameters()]:
            p.copy_(_randn(p.shape, 122 + p.numel()))
    for dense, sharded_cls in ((ln, td.ShardedLayerNorm), (rms, td.ShardedRMSNorm), (add, td.ShardedAddNorm)):
        for validate in (True, False):
            dense.zero_grad()
            sharded = sharded_cls.from_dense(dense, shard_sizes=(4, 2, 0, 4), validate=validate)
            assert sharded.shard_sizes == (4, 2, 0, 4) and sharded.normalized_shape == (n,)
            xs = _leaf(sharded.shard(x))
            ys = sharded(xs, sharded.shard(x)) if dense is add else sharded(xs)
            yd = dense(x, x) if dense is add else dense(x)
            if dense is add:
                (ys[0] * sharded.shard(dy)).sum().backward()
                (yd[0] * dy).sum().backward()
                ys, yd = ys[0], yd[0]
            else:
                (ys * sharded.shard(dy)).sum().backward()
                (yd * dy).sum().backward()
            assert_close(ys, sharded.shard(yd.detach()), **FP32)
            for (name, p), q in zip(sharded.named_parameters(), dense.parameters()):
                assert_close(p.grad, sharded.shard(q.grad), **FP32, msg=f"{sharded_cls.__name__}.{name}.grad")
    default = td.ShardedLayerNorm(n, group=ctx.pair)
    assert default.shard_sizes == td.default_shard_sizes(n, 2) == (5, 5) and default.shard_offset == 5 * ctx.pair_rank
    twin = copy.deepcopy(default)  # shares the process group, copies the parameters
    assert twin.group is ctx.pair and twin.weight is not default.weight
    assert_close(twin(default.shard(x)), default(default.shard(x)), rtol=0, atol=0)


@check
def tp_add_norm_dropout(ctx: Ctx) -> None:
    """With dropout, h keeps or drops each element of x (scaled by 1/(1-p)) and y is the norm of that h."""
    sizes, n, p = (3, 4, 1, 2), 10, 0.4
    x, res = _randn((6, n), 130), _randn((6, n), 131)
    torch.manual_seed(1000 + ctx.rank)
    ys, hs = td.sharded_add_norm(_slice(x, sizes, ctx.rank), _slice(res, sizes, ctx.rank), dropout_p=p, prenorm=True)
    xd = hs - _slice(res, sizes, ctx.rank)
    kept = _slice(x, sizes, ctx.rank) / (1 - p)
    assert bool(((xd - kept).abs() < 1e-5).logical_or(xd.abs() < 1e-6).all()), "h is not residual + dropout(x)"
    assert 0 < int((xd.abs() < 1e-6).sum()) < xd.numel() or xd.numel() < 8
    h_full = torch.zeros(6, n)
    start = sum(sizes[: ctx.rank])
    h_full[:, start : start + sizes[ctx.rank]] = hs
    dist.all_reduce(h_full)
    assert_close(ys, _slice(ref.layer_norm(h_full, (n,)), sizes, ctx.rank), **FP32)


# --------------------------------------------------------------------------------------------- DTensor


@check
def dtensor_1d_uneven(ctx: Ctx) -> None:
    n = 10  # DTensor splits it (3, 3, 3, 1) over 4 ranks
    x, w, b, dy = _randn((2, 5, n), 140), _randn((n,), 141, shift=1.0), _randn((n,), 142), _randn((2, 5, n), 143)
    xd = distribute_tensor(x, ctx.mesh1d, [Shard(-1)]).requires_grad_()
    wd = distribute_tensor(w, ctx.mesh1d, [Shard(-1)]).requires_grad_()
    bd = distribute_tensor(b, ctx.mesh1d, [Shard(0)]).requires_grad_()
    yd = td.sharded_layer_norm(xd, wd, bd)
    assert isinstance(yd, DTensor) and yd.placements == xd.placements and yd.shape == xd.shape
    (yd.to_local() * distribute_tensor(dy, ctx.mesh1d, [Shard(-1)]).to_local()).sum().backward()
    want = ref.layer_norm_backward(dy, x, (n,), w, b)
    assert_close(yd.full_tensor(), ref.layer_norm(x, (n,), w, b), **FP32)
    assert_close(xd.grad.full_tensor(), want.dx, **FP32)
    assert_close(wd.grad.full_tensor(), want.dweight, **FP32)
    assert_close(bd.grad.full_tensor(), want.dbias, **FP32)
    module = td.ShardedRMSNorm.from_dense(nn.RMSNorm(n), group=ctx.mesh1d.get_group(0))
    out = module(xd.detach())
    assert isinstance(out, DTensor)
    assert_close(out.full_tensor(), ref.rms_norm(x, (n,)), **FP32)


@check
def dtensor_2d_tokens_and_hidden(ctx: Ctx) -> None:
    """Tokens split on "dp", hidden on "tp": γ's gradient is a partial sum over "dp", as in torch's own rule."""
    n = 7
    x, w, dy = _randn((4, 3, n), 150), _randn((n,), 151, shift=1.0), _randn((4, 3, n), 152)
    placements = [Shard(0), Shard(2)]
    xd = distribute_tensor(x, ctx.mesh2d, placements).requires_grad_()
    wd = distribute_tensor(w, ctx.mesh2d, [Replicate(), Shard(0)]).requires_grad_()
    yd = td.sharded_rms_norm(xd, wd, 1e-6)
    assert yd.placements == tuple(placements)
    (yd.to_local() * distribute_tensor(dy, ctx.mesh2d, placements).to_local()).sum().backward()
    want = ref.rms_norm_backward(dy, x, (n,), w, 1e-6)
    assert_close(yd.full_tensor(), ref.rms_norm(x, (n,), w, 1e-6), **FP32)
    assert_close(xd.grad.full_tensor(), want.dx, **FP32)
    assert_close(wd.grad.full_tensor(), want.dweight, **FP32)


# ------------------------------------------------------------------------------------------ bad input


@check
def errors_raised_on_every_rank(ctx: Ctx) -> None:
    """Each bad argument raises the same clear error on every rank, whichever rank got it wrong."""
    sizes, n = (3, 1, 4, 2), 10
    x = _randn((2, n), 160)
    xs = _slice(x, sizes, ctx.rank)
    ws = torch.ones(sizes[ctx.rank])
    _expect_error(
        RuntimeError,
        r"shard sizes .*\[3, 1, 4, 2\] add up to 10, but full_size=11",
        lambda: td.sharded_layer_norm(xs, full_size=11),
    )
    bad_w = torch.ones(5) if ctx.rank == 2 else ws
    _expect_error(
        RuntimeError,
        r"weight_shard must be 1-D .* group rank\(s\) \[2\]",
        lambda: td.sharded_layer_norm(xs, bad_w, full_size=n),
    )
    _expect_error(
        ValueError,
        r"bias_shard must be given on every rank or on none",
        lambda: td.sharded_layer_norm(xs, ws, None if ctx.rank == 3 else torch.zeros_like(ws)),
    )
    rows = _randn((7, sizes[ctx.rank]), 161) if ctx.rank == 1 else xs
    _expect_error(RuntimeError, r"x_shard must hold the same tokens on every rank", lambda: td.sharded_rms_norm(rows))
    _expect_error(
        ValueError,
        r"eps must be the same on every rank",
        lambda: td.sharded_layer_norm(xs, eps=1e-5 if ctx.rank else 1e-6),
    )
    _expect_error(
        TypeError,
        r"x_shard must have the same dtype on every rank",
        lambda: td.sharded_rms_norm(xs.double() if ctx.rank == 0 else xs),
    )
    res = torch.zeros(2, 9) if ctx.rank == 3 else torch.zeros_like(xs)
    _expect_error(
        RuntimeError, r"residual_shard must have x_shard's shape .*\[3\]", lambda: td.sharded_add_norm(xs, res)
    )
    _expect_error(
        ValueError,
        r"shard_sizes=\[3, 3, 3\] must give one non-negative size per rank",
        lambda: td.ShardedLayerNorm(n, shard_sizes=(3, 3, 3)),
    )
    xd = distribute_tensor(x, ctx.mesh1d, [Shard(1)])
    _expect_error(
        ValueError,
        r"group: the process group passed is not the group of x_shard's DeviceMesh.*\[0\]",
        lambda: td.sharded_layer_norm(xd, group=ctx.pair if ctx.rank == 0 else None),
    )
    wd = distribute_tensor(torch.ones(n), ctx.mesh1d, [Replicate()])
    _expect_error(
        ValueError,
        r"weight_shard: a DTensor weight must live on x_shard's DeviceMesh, sharded Shard\(0\)",
        lambda: td.sharded_layer_norm(xd, wd),
    )
    _expect_error(
        ValueError,
        r"sharded on its last dim .*Shard\(-1\)",
        lambda: td.sharded_layer_norm(distribute_tensor(x, ctx.mesh1d, [Replicate()])),
    )
    # The same argument checks run before any computation, so the group is still in step afterwards:
    assert_close(td.sharded_layer_norm(xs, full_size=n), _slice(ref.layer_norm(x, (n,)), sizes, ctx.rank), **FP32)


@check
def mismatched_groups_time_out_with_a_clear_error(ctx: Ctx) -> None:
    """Ranks 0 and 1 pass two different groups over themselves: both get an error, not a hang."""
    previous = os.environ.get(td.TIMEOUT_ENV_VAR)
    os.environ[td.TIMEOUT_ENV_VAR] = "1"
    try:
        xs = _randn((2, 3), 170 + ctx.rank)
        if ctx.rank < 2:
            group = ctx.dup_a if ctx.rank == 0 else ctx.dup_b
            started = time.monotonic()
            _expect_error(
                RuntimeError,
                r"did not complete within 1 s.*same process group",
                lambda: td.sharded_layer_norm(xs, group=group),
            )
            assert time.monotonic() - started < 10
        else:
            td.sharded_layer_norm(xs, group=ctx.pair)  # the other pair is unaffected
    finally:
        if previous is None:
            del os.environ[td.TIMEOUT_ENV_VAR]
        else:
            os.environ[td.TIMEOUT_ENV_VAR] = previous


# ---------------------------------------------------------------------------------- sequence parallel


class _SPModel(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = tokennorm.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.add = tokennorm.AddNorm(d, norm="rmsnorm", placement="pre", bias=True)
        self.rms = tokennorm.RMSNorm(d, eps=1e-6)
        self.unused = tokennorm.LayerNorm(d)  # its gradients are None on every rank and must stay None

    def forward(self, x):
        y, h = self.add(self.fc(self.ln(x)), x)
        return self.rms(y) + h


def _check_sequence_parallel(group, index: int, counts, average: bool) -> None:
    """Rank ``index`` of ``group`` runs tokens ``counts[index]``; one process runs them all.

    The loss is the sum of the ranks' losses, or with ``average`` the mean of their per-token means.
    """
    d = 6
    torch.manual_seed(0)
    model = _SPModel(d)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(_randn(p.shape, p.numel()) * 0.3)
    single = copy.deepcopy(model)
    x, c = _randn((sum(counts), d), 180), _randn((sum(counts), d), 181)
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]

    def loss(m: nn.Module, i: int) -> torch.Tensor:
        lo, hi = bounds[i], bounds[i + 1]
        total = (m(x[lo:hi]) * c[lo:hi]).sum()
        return total / (hi - lo) if average else total

    loss(model, index).backward()
    assert td.allreduce_norm_grads(model, group, average=average) == 7  # ln 2, add 2, rms 1, unused 2
    whole = sum(loss(single, i) for i in range(len(counts)))
    (whole / len(counts) if average else whole).backward()
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        if name.startswith("unused"):
            assert p.grad is None and q.grad is None
        elif not name.startswith("fc"):  # the Linear is not a norm: its gradient stays this rank's own
            assert_close(p.grad, q.grad, **FP32, msg=name)
    for m in (model, single):
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        if name.split(".")[0] in ("ln", "add", "rms"):
            assert_close(p, q, **FP32, msg=f"{name} after one SGD step")


@check
def sequence_parallel_grads(ctx: Ctx) -> None:
    _check_sequence_parallel(None, ctx.rank, (4, 3, 5, 1), average=False)
    _check_sequence_parallel(ctx.pair, ctx.pair_rank, (3, 3), average=True)
    with pytest.raises(TypeError, match="is a DTensor"):
        ln = nn.LayerNorm(4)
        ln.weight = nn.Parameter(distribute_tensor(torch.ones(4), ctx.mesh1d, [Replicate()]))
        td.allreduce_norm_grads(ln)


# ------------------------------------------------------------------------------------------------ FSDP2


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = tokennorm.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.add = tokennorm.AddNorm(d, norm="rmsnorm", placement="pre", residual_dtype=torch.float32)
        self.rms = tokennorm.RMSNorm(d)

    def forward(self, x):
        y, h = self.add(self.fc(self.ln(x)), x)
        return self.rms(y) + h


def _fsdp(model: nn.Module, mesh, mp_policy=None) -> nn.Module:
    kwargs = {"mesh": mesh} if mp_policy is None else {"mesh": mesh, "mp_policy": mp_policy}
    for name in ("ln", "add", "rms"):
        fully_shard(getattr(model, name), **kwargs)
    return fully_shard(model, **kwargs)


def _fsdp_setup(d: int = 10):
    torch.manual_seed(1)
    model = _Block(d)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(_randn(p.shape, 190 + p.numel()) * 0.2)
    return model, _randn((WORLD, 3, d), 191), _randn((WORLD, 3, d), 192)


@check
def fsdp2_fp32(ctx: Ctx) -> None:
    """Data parallel over 4 ranks with norm parameters sharded (10 over 4: uneven) equals one process."""
    model, x, c = _fsdp_setup()
    single = copy.deepcopy(model)
    sharded = _fsdp(model, ctx.mesh1d)
    assert isinstance(sharded.ln.weight, DTensor) and sharded.ln.weight.placements == (Shard(0),)
    (sharded(x[ctx.rank]) * c[ctx.rank]).sum().backward()
    (sum((single(x[r]) * c[r]).sum() for r in range(WORLD)) / WORLD).backward()  # FSDP averages over ranks
    for (name, p), q in zip(sharded.named_parameters(), single.parameters()):
        assert_close(p.grad.full_tensor(), q.grad, **FP32, msg=name)
    for m in (sharded, single):
        torch.optim.SGD(m.parameters(), lr=0.5).step()
    for (name, p), q in zip(sharded.named_parameters(), single.parameters()):
        assert_close(p.full_tensor(), q, **FP32, msg=f"{name} after one SGD step")
    assert sharded.state_dict().keys() == single.state_dict().keys()


@check
def fsdp2_mixed_precision_bf16(ctx: Ctx) -> None:
    """bf16 parameters in compute, fp32 sharded parameters and fp32 gradient reduction."""
    model, x, c = _fsdp_setup()
    single = copy.deepcopy(model)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    sharded = _fsdp(model, ctx.mesh1d, policy)
    seen = []  # runs after FSDP's own pre-forward hook, which unshards and casts the parameters
    sharded.ln.register_forward_pre_hook(lambda m, args: seen.append((m.weight.dtype, args[0].dtype)))
    (sharded(x[ctx.rank]) * c[ctx.rank]).sum().backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)], seen
    # The same mixed precision in one process: each rank's bf16 gradients, averaged in fp32.
    expected = [torch.zeros_like(p) for p in single.parameters()]
    for r in range(WORLD):
        replica = copy.deepcopy(single).to(torch.bfloat16)
        (replica(x[r].bfloat16()) * c[r]).sum().backward()
        for e, p in zip(expected, replica.parameters()):
            e += p.grad.float() / WORLD
    (sum((single(x[r]) * c[r]).sum() for r in range(WORLD)) / WORLD).backward()
    for (name, p), e, q in zip(sharded.named_parameters(), expected, single.parameters()):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
        # fp32 sums of 4 terms in another order: a few fp32 ulps.
        assert_close(p.grad.full_tensor(), e, **FP32, msg=name)
        # and bf16 training stays close to fp32 training: bf16 rounding of activations, ~1e-2 relative.
        assert_close(p.grad.full_tensor(), q.grad, rtol=5e-2, atol=5e-2, msg=f"{name} vs fp32")


# ------------------------------------------------------------------------------------------- harness


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # 4 ranks share this machine's cores
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    os.environ[td.TIMEOUT_ENV_VAR] = str(COLLECTIVE_TIMEOUT_S)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    dup_a, dup_b = dist.new_group([0, 1]), dist.new_group([0, 1])
    ctx = Ctx(
        rank=rank,
        pair=pairs[rank // 2],
        pair_rank=rank % 2,
        pair_id=rank // 2,
        dup_a=dup_a,
        dup_b=dup_b,
        mesh1d=init_device_mesh("cpu", (WORLD,)),
        mesh2d=init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")),
    )
    results: dict[str, str] = {}
    path = os.path.join(out_dir, f"rank{rank}.json")
    for name, fn in CHECKS.items():
        try:
            fn(ctx)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)
    # No destroy_process_group: the mismatched-group check leaves a gather pending on purpose.


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("distributed")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(r, str(out / "store"), str(out)), daemon=True) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + DEADLINE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r in range(WORLD):
        path = out / f"rank{r}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return results


@pytest.mark.parametrize("name", list(CHECKS))
def test_distributed(rank_results, name: str) -> None:
    failures = {r: res.get(name, "did not finish (hang, crash or deadline)") for r, res in enumerate(rank_results)}
    failures = {r: text for r, text in failures.items() if text != "ok"}
    assert not failures, "\n".join(f"--- rank {r}:\n{text}" for r, text in failures.items())


def test_default_shard_sizes_follow_dtensor() -> None:
    for n, world in ((10, 4), (5, 4), (8, 2), (1, 3), (0, 2)):
        chunks = torch.arange(n).chunk(world) if n else ()
        want = [len(c) for c in chunks] + [0] * (world - len(chunks))
        assert list(td.default_shard_sizes(n, world)) == want


def test_merge_matches_two_pass_statistics() -> None:
    """The shard-moment merge equals the float64 mean and biased variance of the whole rows."""
    from tokennorm.distributed._stats import local_moments, merge_moments

    x = _randn((5, 23), 200, shift=7.0)
    sizes = (6, 0, 9, 1, 7)
    parts = torch.stack([local_moments(s) for s in x.split(sizes, dim=1)])
    mean, var, total = merge_moments(parts, rows=5)
    assert total.item() == 23
    assert_close(mean, x.double().mean(1, keepdim=True).float(), **FP32)
    assert_close(var, x.double().var(1, unbiased=False, keepdim=True).float(), **FP32)
