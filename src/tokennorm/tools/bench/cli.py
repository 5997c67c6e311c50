"""``tokennorm bench``: tokennorm vs torch eager, torch.compile and every installed peer.

LayerNorm, RMSNorm and Add & Norm (with and without dropout), forward and forward+backward; GB/s from the
fewest bytes each op must move, and the fraction of a device-to-device copy of the same bytes measured with each
case. Device time per call (CUDA-graph replay, L2 flushed) and host time per eager call are separate columns
(:mod:`~tokennorm.tools.bench.timing`). On CUDA the default is the full GPU sweep (bf16/fp16/fp32, N from 1K to
1M at M·N = 2^27, plus M = 1 and 4096 at N = 4096); on a CPU-only machine, a small sweep that runs in seconds,
on one thread. Output paths are checked (their folders created) and sizes are checked against the free memory
before anything runs; numbers that cannot be trusted (an implausible copy baseline, wide spreads) are flagged.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from typing import Callable, Sequence, TypeVar

from tokennorm.tools.bench.cases import DIRECTIONS, DTYPES, OPS, Sweep, default_sweep, torch_dtype
from tokennorm.tools.bench.implementations import IMPLEMENTATIONS, Impl

T = TypeVar("T")
_COUNT = re.compile(r"^\s*(?:(\d+)\s*\^\s*(\d+)|(\d+)\s*([kKmMgG]?))\s*$")
_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_count(text: str) -> int:
    """A positive count: ``4096``, ``4K`` (×1024), ``1M`` (×2^20), ``1G`` or ``2^27``."""
    match = _COUNT.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 4096, 4K, 1M, 2^27)")
    base, exp, digits, suffix = match.groups()
    value = int(base) ** int(exp) if base is not None else int(digits) * _SUFFIX[suffix.lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _comma_list(parse: Callable[[str], T]) -> Callable[[str], tuple[T, ...]]:
    def parse_list(text: str) -> tuple[T, ...]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        return tuple(dict.fromkeys(parse(item) for item in items))  # order kept, duplicates dropped

    return parse_list


def _one_of(names: Sequence[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(names)}")
        return text

    return parse


def _latency_rows(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() == "none" else _comma_list(parse_count)(text)


def _sizes(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() == "none" else _comma_list(parse_count)(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="where to run (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--ops",
        type=_comma_list(_one_of(tuple(OPS), "op")),
        default=None,
        help=f"comma-separated, from {', '.join(OPS)} (default: ln,rms,addnorm,addnorm-drop)",
    )
    parser.add_argument(
        "--dirs",
        type=_comma_list(_one_of(DIRECTIONS, "direction")),
        default=None,
        help="fwd, fwdbwd or both (default: both)",
    )
    parser.add_argument(
        "--dtypes",
        type=_comma_list(_one_of(tuple(DTYPES), "dtype")),
        default=None,
        help="comma-separated, from bf16, fp16, fp32",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="row lengths N of the throughput cases, e.g. 1K,4K,1M, or 'none' (default: 1K…1M on CUDA, 1K,4K on CPU)",
    )
    parser.add_argument(
        "--mn",
        type=parse_count,
        default=None,
        help="total elements M·N of the throughput cases, e.g. 2^27 (default: 2^27 on CUDA, 2^18 on CPU)",
    )
    parser.add_argument(
        "--latency-rows",
        type=_latency_rows,
        default=None,
        help="M of the latency cases, or 'none' (default: 1,4096 on CUDA, 1 on CPU)",
    )
    parser.add_argument("--latency-n", type=parse_count, default=4096, help="N of the latency cases (4096)")
    parser.add_argument(
        "--impls",
        type=_comma_list(_one_of(tuple(IMPLEMENTATIONS), "implementation")),
        default=None,
        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)} (default: all; compile is opt-in on the CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes and dtypes, fewer rounds")
    parser.add_argument(
        "--rounds",
        type=parse_count,
        default=None,
        help="interleaved rounds, i.e. samples per number (default 15; 7 with --quick)",
    )
    parser.add_argument(
        "--timing",
        choices=("graph", "profiler"),
        default="graph",
        help="CUDA device time from CUDA-graph replay (default; the profiler where a call cannot be "
        "captured) or from the profiler's kernel durations for every implementation (a "
        "cross-check)",
    )
    parser.add_argument(
        "--threads",
        type=parse_count,
        default=None,
        help="torch CPU threads for the run (default: 1 on the CPU, where waiting for a descheduled "
        "worker thread costs milliseconds per op on a loaded machine; torch's own on CUDA)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the environment, notes, warnings and every row here (rewritten after each "
        "case, so a stopped run keeps what it measured); '-' prints it to standard output "
        "(and the tables to standard error)",
    )
    parser.add_argument("--csv", metavar="PATH", help="write every row here")
    parser.add_argument("--plot", metavar="PATH.png", help="plot the fraction of copy against N here")
    parser.add_argument("--markdown", metavar="PATH", help="write Markdown tables (for benchmarks/RESULTS.md) here")


def _sweep_from(args: argparse.Namespace, device: str) -> Sweep:
    """The device's default sweep with every option the user gave put in."""
    base = default_sweep(device, args.quick)
    return dataclasses.replace(
        base,
        ops=args.ops or base.ops,
        directions=args.dirs or base.directions,
        dtypes=tuple(map(torch_dtype, args.dtypes)) if args.dtypes else base.dtypes,
        ns=base.ns if args.sizes is None else args.sizes,
        mn=args.mn or base.mn,
        latency_rows=base.latency_rows if args.latency_rows is None else args.latency_rows,
        latency_n=args.latency_n,
    )


def _impls_from(args: argparse.Namespace, device: str) -> tuple[list[Impl], list[str]]:
    """The implementations to run, and a note for each default one left out on this device."""
    if args.impls:
        return [IMPLEMENTATIONS[name] for name in args.impls], []
    if device == "cuda":
        return list(IMPLEMENTATIONS.values()), []
    left_out = [i.name for i in IMPLEMENTATIONS.values() if not i.cpu_default]
    notes = [
        f"{name}: not in the default CPU run (it compiles for seconds per case here); add it with --impls"
        for name in left_out
    ]
    return [i for i in IMPLEMENTATIONS.values() if i.cpu_default], notes


def _budget(args: argparse.Namespace):
    from tokennorm.tools.bench.timing import DEFAULT_BUDGET, QUICK_BUDGET

    budget = QUICK_BUDGET if args.quick else DEFAULT_BUDGET
    return dataclasses.replace(budget, rounds=args.rounds) if args.rounds else budget


def _run_with_progress(
    sweep: Sweep, impls: list[Impl], device: str, args: argparse.Namespace, console, notes: list[str]
):
    from tokennorm.tools import progress_bar
    from tokennorm.tools.bench import report
    from tokennorm.tools.bench.runner import run_sweep
    from tokennorm.tools.bench.timing import GraphTimer

    timer = GraphTimer(force_profiler=args.timing == "profiler") if device == "cuda" else None

    def save(partial) -> None:  # after each case: a run stopped by a timeout keeps what it measured
        if args.json and args.json != "-":
            partial.notes = notes + partial.notes
            report.write_json(args.json, partial)
            partial.notes = partial.notes[len(notes) :]

    with progress_bar(console, "benchmark") as on_task:
        return run_sweep(
            sweep, impls, device, _budget(args), seed=args.seed, on_task=on_task, timer=timer, on_case=save
        )


def _fail(message: str) -> int:
    """The one-line error of the command (exit 2)."""
    print(f"tokennorm bench: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from tokennorm.tools.bench import preflight

    problem = preflight.prepare_outputs(
        [("--json", args.json), ("--csv", args.csv), ("--plot", args.plot), ("--markdown", args.markdown)]
    )
    if problem:
        return _fail(problem)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _fail(f"--plot {args.plot}: needs matplotlib (pip install matplotlib)")

    import torch
    from rich.console import Console

    from tokennorm.tools.bench import report

    # With --json - the JSON alone goes to standard output. Logs (not a terminal) get a width that fits the table
    # instead of rich's 80 columns.
    to_stderr = args.json == "-"
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 150)
    errors = Console(stderr=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: no CUDA device is available to torch here")
    sweep = _sweep_from(args, device)
    impls, notes = _impls_from(args, device)
    cases = sweep.cases()
    if not cases:
        return _fail("nothing to measure: --sizes none and --latency-rows none")
    problem = preflight.oversized(cases, len(impls), device, preflight.available_memory(device))
    if problem:
        return _fail(problem)

    threads = torch.get_num_threads()
    wanted = args.threads or (1 if device == "cpu" else None)
    if wanted:
        torch.set_num_threads(wanted)
    start = time.perf_counter()
    try:
        result = _run_with_progress(sweep, impls, device, args, errors, notes)
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back
    elapsed = time.perf_counter() - start
    result.notes = notes + result.notes

    for kind in ("throughput", "latency"):
        if any(r.kind == kind for r in result.results):
            console.print(report.table(result.results, kind, device))
    for note in result.notes:
        console.print(f"[yellow]skipped[/] {note}", highlight=False)
    for warning in result.warnings:
        console.print(f"[bold yellow]warning[/] {warning}", highlight=False)
    if args.json:
        report.write_json(args.json, result)
    if args.csv:
        report.write_csv(args.csv, result.results)
    if args.plot:
        report.write_plot(args.plot, result)
    if args.markdown:
        report.write_markdown(args.markdown, result)
    env = result.environment
    copy = sorted(
        {
            c.gbps
            for c in result.copies
            if c.kind == "throughput" and not any(f.startswith("implausible") for f in c.flags)
        }
    )
    copy_text = f"{copy[0]:.0f}–{copy[-1]:.0f}" if len(copy) > 1 else (f"{copy[0]:.0f}" if copy else "-")
    methods = ", ".join(f"{m} {n}" for m, n in report.methods(result.results).items())
    console.print(
        f"{len(result.results)} rows on {device} ({env['device_name']}), tokennorm backend "
        f"{env['tokennorm_backend']}, torch {env['torch']}, triton {env['triton']}, {env['cpu_threads']} CPU "
        f"thread(s), {elapsed:.1f} s; device copy {copy_text} GB/s; device time by {methods or '-'}",
        highlight=False,
    )
    if not result.results:
        errors.print("[bold red]tokennorm bench:[/] no implementation ran any case (see the notes above).")
        return 1
    return 0
