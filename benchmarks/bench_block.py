"""One GPT-style pre-LN Transformer block, forward + backward: tokennorm's norms vs torch's, eager and compiled.

    PYTHONPATH=src python3 benchmarks/bench_block.py --json block.json        # CUDA: d_model 1024, 2048, 4096
    PYTHONPATH=src python3 benchmarks/bench_block.py --device cpu --tiny      # smoke run anywhere

The block is ``h = x + Attn(Norm1(x))``, ``out = h + FFN(Norm2(h))`` (causal SDPA attention, GELU FFN of width
4·d_model, head_dim 128, no dropout), parameters and activations in bf16 on CUDA. Two versions share the very
same attention and FFN weights and differ only in their norms:

* ``tokennorm``: :class:`tokennorm.transformer.DecoderLayer` (``placement="pre"``): ``tokennorm.LayerNorm`` /
  ``RMSNorm`` before attention and the fused ``tokennorm.AddNorm`` (residual add + norm in one kernel) before
  the FFN;
* ``torch``: the same block with ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` and a separate ``+``.

Each is timed eagerly and under ``torch.compile`` (default mode). A step is ``out.backward(dy)`` on a fresh
forward, gradients of the parameters and of ``x`` set to None first. Times come from ``tokennorm bench``'s
harness (tokennorm.tools.bench.timing): on CUDA, device time per step from CUDA-graph replay of back-to-back steps
with the L2 flushed before each sample (median and 20th/80th percentiles), and host time per eager step as its
own column; on the CPU, the wall clock. Each row also reports how far tokennorm's output and input gradient are
from torch eager's (bf16 rounding is expected; a real bug shows as O(1)).

Nothing here can stop the sweep: a configuration that fails (out of memory, a compile error) is reported as a
failed row with its reason, and the script still prints the table, writes the JSON and exits 0. Without CUDA and
without ``--device cpu`` it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

IMPLS = ("torch", "tokennorm")
MODES = ("eager", "compile")
NORMS = ("layernorm", "rmsnorm")


# ------------------------------------------------------------------------------------------------- blocks


class TorchPreLNBlock(nn.Module):
    """The same pre-LN block with torch's norm modules and a plain residual add (the baseline)."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        self.self_attn = copy.deepcopy(ours.self_attn)
        self.ff = copy.deepcopy(ours.ff)
        d, eps = ours.d_model, ours.eps
        p = next(ours.parameters())
        factory = {"device": p.device, "dtype": p.dtype}
        if ours.norm_type == "layernorm":
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=eps, **factory), nn.LayerNorm(d, eps=eps, **factory)
        else:
            self.norm1, self.norm2 = nn.RMSNorm(d, eps=eps, **factory), nn.RMSNorm(d, eps=eps, **factory)
        with torch.no_grad():
            for name in ("norm1", "norm2"):
                theirs, mine = getattr(self, name), getattr(ours, name)
                theirs.weight.copy_(mine.weight)
                if getattr(theirs, "bias", None) is not None:
                    theirs.bias.copy_(mine.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.self_attn(self.norm1(x), is_causal=True)
        return h + self.ff(self.norm2(h))


class OursCausal(nn.Module):
    """tokennorm's DecoderLayer (no cross-attention), called causally with a single argument."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x, causal=True)


def build_pair(d_model: int, norm: str, device: str, dtype: torch.dtype, seed: int) -> tuple[nn.Module, nn.Module]:
    """(torch block, tokennorm block) with identical weights; norm weights/biases randomised (not 1/0) so a
    swapped or ignored parameter would show in the output check."""
    from tokennorm.transformer import DecoderLayer

    torch.manual_seed(seed)
    nhead = max(1, d_model // 128)
    layer = DecoderLayer(
        d_model,
        nhead,
        4 * d_model,
        dropout=0.0,
        activation="gelu",
        norm=norm,
        placement="pre",
        cross_attention=False,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        for name in ("norm1", "norm2"):
            mod = getattr(layer, name)
            mod.weight.uniform_(0.5, 1.5)
            if getattr(mod, "bias", None) is not None:
                mod.bias.uniform_(-0.1, 0.1)
    return TorchPreLNBlock(layer), OursCausal(layer)


# ------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    host_ms: float
    method: str


def time_step(step: Callable[[], object], leaves: list[Tensor], device: str, rounds: int, sample_ms: float) -> Timing:
    """Device time per step as ``tokennorm bench`` measures it (tokennorm.tools.bench.timing: CUDA-graph replay,
    L2 flushed, the median of ``rounds`` samples), and host time per eager step."""
    from tokennorm.tools.bench.timing import Budget, Measurement, Workload, default_timer, measure_interleaved

    def call() -> None:
        for t in leaves:  # fresh gradients each step, as training writes them (no accumulation kernel)
            t.grad = None
        step()

    budget = Budget(
        rounds=rounds, warmup_calls=2, sample_seconds=sample_ms / 1e3, min_calls=1, max_calls=20, host_burst_calls=2
    )
    m = measure_interleaved({"step": Workload([call], "step")}, default_timer(device), budget)["step"]
    if not isinstance(m, Measurement):
        raise m
    return Timing(m.device.median * 1e3, m.device.p20 * 1e3, m.device.p80 * 1e3, m.host.median * 1e3, m.method)


# -------------------------------------------------------------------------------------------------- sweep


@dataclass
class Row:
    d_model: int
    norm: str
    mode: str
    impl: str
    tokens: int
    median_ms: Optional[float] = None  # device time per step
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    host_ms: Optional[float] = None  # host time per eager step
    method: Optional[str] = None  # graph | profiler | wall
    out_err: Optional[float] = None  # max|y - y_torch_eager| / max|y_torch_eager|
    dx_err: Optional[float] = None  # the same for the gradient of x
    error: Optional[str] = None


def _rel_err(a: Tensor, ref: Tensor) -> float:
    return ((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def _reason(exc: BaseException) -> str:
    """The exception type and its message on one line (long: compile errors nest the root cause inside)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:1000]}"


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_case(d_model: int, norm: str, args: argparse.Namespace, dtype: torch.dtype, log) -> list[Row]:
    device = args.device
    tokens = args.batch * args.seq
    rows: list[Row] = []
    try:
        blocks = dict(zip(IMPLS, build_pair(d_model, norm, device, dtype, args.seed)))
        gen = torch.Generator(device=device).manual_seed(args.seed + 1)
        x = torch.randn(args.batch, args.seq, d_model, device=device, dtype=dtype, generator=gen)
        x.requires_grad_(True)
        dy = torch.randn(args.batch, args.seq, d_model, device=device, dtype=dtype, generator=gen)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory building the largest case
        log(f"d_model={d_model} {norm}: setup failed: {_reason(exc)}")
        return [Row(d_model, norm, m, i, tokens, error=_reason(exc)) for m in args.modes for i in IMPLS]

    reference: Optional[tuple[Tensor, Tensor]] = None
    for mode in args.modes:
        for impl in IMPLS:
            row = Row(d_model, norm, mode, impl, tokens)
            rows.append(row)
            try:
                module = blocks[impl]
                fn = torch.compile(module) if mode == "compile" else module
                x.grad = None
                y = fn(x)  # first call: compiles under torch.compile
                y.backward(dy)
                if reference is None and impl == "torch" and mode == "eager":
                    reference = (y.detach().clone(), x.grad.detach().clone())
                if reference is not None:
                    row.out_err, row.dx_err = _rel_err(y, reference[0]), _rel_err(x.grad, reference[1])
                del y
                leaves = [x, *module.parameters()]
                timing = time_step(lambda x=x, dy=dy: fn(x).backward(dy), leaves, device, args.rounds, args.rep_ms)
                row.median_ms, row.p20_ms, row.p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
                row.host_ms, row.method = timing.host_ms, timing.method
                log(f"d_model={d_model:<5} {norm:<9} {mode:<7} {impl:<9} {timing.median_ms:9.3f} ms")
            except Exception as exc:  # noqa: BLE001 - a failed row must not end the sweep
                row.error = _reason(exc)
                log(f"d_model={d_model:<5} {norm:<9} {mode:<7} {impl:<9} FAILED {row.error}")
                if args.verbose:
                    traceback.print_exc()
            finally:
                x.grad = None
                for p in blocks[impl].parameters():
                    p.grad = None
                _free(device)
    del blocks, x, dy, reference
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # drop compiled graphs (and the weights they hold) before the next size
    _free(device)
    return rows


# ------------------------------------------------------------------------------------------------- output


def print_table(rows: list[Row], title: str) -> None:
    """One line per (d_model, norm, mode): torch ms, tokennorm ms (device), speedup, host ms per eager step,
    tokennorm's deviation."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a tokennorm dependency, but a plain table still beats a crash
        Console = Table = None
    header = [
        "d_model",
        "norm",
        "mode",
        "torch ms",
        "tokennorm ms",
        "speedup",
        "host ms torch / ours",
        "Δout rel",
        "Δdx rel",
    ]
    lines = []
    keys = sorted(
        {(r.d_model, r.norm, r.mode) for r in rows},
        key=lambda k: (k[0], NORMS.index(k[1]) if k[1] in NORMS else 9, MODES.index(k[2])),
    )
    for key in keys:
        by_impl = {r.impl: r for r in rows if (r.d_model, r.norm, r.mode) == key}
        t, o = by_impl.get("torch"), by_impl.get("tokennorm")

        def ms(r: Optional[Row]) -> str:
            if r is None:
                return "-"
            if r.median_ms is not None:
                return f"{r.median_ms:.3f}"
            return f"failed: {r.error[:60]}..." if len(r.error or "") > 60 else f"failed: {r.error}"

        speed = "-"
        if t and o and t.median_ms and o.median_ms:
            speed = f"{t.median_ms / o.median_ms:.2f}x"
        errs = [f"{v:.1e}" if v is not None else "-" for v in ((o.out_err, o.dx_err) if o else (None, None))]
        host = " / ".join(f"{r.host_ms:.3f}" if r and r.host_ms is not None else "-" for r in (t, o))
        lines.append([str(key[0]), key[1], key[2], ms(t), ms(o), speed, host, *errs])
    if Table is None:
        print(title)
        print(" | ".join(header))
        for ln in lines:
            print(" | ".join(ln))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("norm", "mode") else "right", no_wrap=h != "tokennorm ms")
    for ln in lines:
        table.add_row(*ln)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped to a file or a log: do not squeeze the table into 80 columns
    console.print(table)


def environment(args: argparse.Namespace) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        from tokennorm import __version__
        from tokennorm.backend import get_backend

        env["tokennorm"] = __version__
        env["tokennorm_backend"] = get_backend()
    except Exception as exc:  # noqa: BLE001
        env["tokennorm"] = f"unavailable: {_reason(exc)}"
    return env


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 or v % 2 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a positive even integer, got {text!r}")
    return values


def _choices(names: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(","))
        bad = [v for v in values if v not in names]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(names)}")
        return values

    return parse


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument(
        "--tiny", action="store_true", help="a smoke configuration: d_model 64,128, batch 2 x seq 64, short timing"
    )
    p.add_argument("--d-models", type=_int_list, default=None, help="comma list (default 1024,2048,4096)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024)")
    p.add_argument("--norms", type=_choices(NORMS), default=NORMS, help="comma list of layernorm, rmsnorm")
    p.add_argument("--modes", type=_choices(MODES), default=MODES, help="comma list of eager, compile")
    p.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="parameter and activation dtype (default bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--rep-ms",
        type=float,
        default=None,
        help="milliseconds of work per timing sample (default 5; steps are captured back to back)",
    )
    p.add_argument("--rounds", type=int, default=None, help="timing samples per row (default 10; 3 with --tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write environment, settings and every row to this file")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failed rows")
    args = p.parse_args(argv)
    args.d_models = args.d_models or ((64, 128) if args.tiny else (1024, 2048, 4096))
    args.batch = args.batch or (2 if args.tiny else 8)
    args.seq = args.seq or (64 if args.tiny else 1024)
    args.rep_ms = args.rep_ms or (1 if args.tiny else 5)
    args.rounds = args.rounds or (3 if args.tiny else 10)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        if not torch.cuda.is_available():
            print(
                "bench_block: no CUDA device on this machine; this benchmark measures GPU kernels. "
                "For a smoke run on the CPU: --device cpu --tiny"
            )
            return 0
        args.device = "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"bench_block: --device {args.device} requested but CUDA is not available; nothing to measure. "
            "For a smoke run on the CPU: --device cpu --tiny"
        )
        return 0
    try:
        torch.device(args.device)
    except RuntimeError as exc:
        print(f"bench_block: bad --device {args.device!r}: {exc}")
        return 2
    on_cuda = args.device.startswith("cuda")
    if on_cuda and ":" in args.device:
        torch.cuda.set_device(args.device)
    dtype_name = args.dtype or ("bf16" if on_cuda else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    env = environment(args)
    title = (
        f"pre-LN block fwd+bwd, {args.batch}x{args.seq} tokens, {dtype_name}, head_dim 128, FFN 4x, "
        f"{env['device_name']} (median device ms per step, {'CUDA-graph replay' if on_cuda else 'wall clock'}; "
        "speedup = torch / tokennorm)"
    )
    print(title, flush=True)
    rows: list[Row] = []
    started = time.perf_counter()

    def save() -> None:  # after each case: a run stopped by a timeout keeps what it measured
        if not args.json:
            return
        payload = {
            "environment": env,
            "settings": {
                "d_models": list(args.d_models),
                "batch": args.batch,
                "seq": args.seq,
                "norms": list(args.norms),
                "modes": list(args.modes),
                "dtype": dtype_name,
                "rep_ms": args.rep_ms,
                "rounds": args.rounds,
                "seed": args.seed,
            },
            "seconds": round(time.perf_counter() - started, 1),
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json, "w") as f:
            json.dump(
                payload, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)
            )

    for d_model in args.d_models:
        for norm in args.norms:
            rows += run_case(d_model, norm, args, dtype, lambda msg: print(msg, flush=True))
            save()
    print_table(rows, title)
    failed = [r for r in rows if r.error]
    if failed:
        print(f"{len(failed)} of {len(rows)} measurements failed (see the table / JSON).")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
