"""``python -m tokennorm.tools.kernel_report``: what each default launch of the public API compiles to on sm_90.

For every op, direction and row length N it makes the public call on CPU tensors under a fake CUDA driver
(:mod:`.fakecuda`), and reports each kernel launched: registers, spills, shared memory, programs and warps
per SM, global load/store widths, barriers, shuffles, division/sqrt flavours, cp.async, SASS per element and
the share of the SM's issue rate needed at copy bandwidth (:mod:`.analysis`, :mod:`.hopper`). With
liger-kernel installed, Liger's kernel at the same N is reported beside tokennorm's. No GPU is needed; the
process must not run Triton's interpreter (TRITON_INTERPRET=1). ::

    python -m tokennorm.tools.kernel_report                      # rich table, bf16, LN/RMS/Add & Norm
    python -m tokennorm.tools.kernel_report --n 1K,4K,16K --ops ln --directions fwd
    python -m tokennorm.tools.kernel_report --dtype fp32 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn, Optional, Sequence

from tokennorm.tools.kernel_report import cases

PROG = "python -m tokennorm.tools.kernel_report"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints the usage too)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _row_length(text: str) -> int:
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"invalid row length {text!r} (e.g. 4096, 4K, 1M)")
    return int(digits) * scale


def _choices(allowed: Sequence[str], what: str):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {', '.join(bad) or repr(text)} (choose from {', '.join(allowed)})"
            )
        return items

    return parse


def _lengths(text: str) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("no row length given")
    return tuple(_row_length(t) for t in items)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument(
        "--ops",
        type=_choices(tuple(cases.OPS), "op"),
        default=cases.DEFAULT_OPS,
        help=f"comma-separated, from {', '.join(cases.OPS)} (default: {','.join(cases.DEFAULT_OPS)})",
    )
    p.add_argument(
        "--directions",
        type=_choices(cases.DIRECTIONS, "direction"),
        default=cases.DEFAULT_DIRECTIONS,
        help="fwd (under autograd), bwd, infer (no autograd) (default: fwd,bwd)",
    )
    p.add_argument("--dtype", choices=tuple(cases.DTYPES), default="bf16")
    p.add_argument(
        "--n",
        type=_lengths,
        default=cases.DEFAULT_NS,
        metavar="N[,N...]",
        help="row lengths, e.g. 1K,4K,1M (default: 1K to 1M as the GPU sweep)",
    )
    p.add_argument("--no-liger", action="store_true", help="leave Liger's kernels out even when installed")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON ('-': stdout, no table)")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table for RESULTS.md ('-': stdout, no table)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print(
            f"{PROG}: error: unset TRITON_INTERPRET: the report compiles kernels for sm_90, which the "
            "interpreter never does",
            file=sys.stderr,
        )
        return 2
    from rich.console import Console

    from tokennorm.tools.kernel_report import fakecuda, report

    fakecuda.install()
    impls = ("tokennorm",) if args.no_liger else cases.IMPLS
    plan = [
        (impl, op, direction, n) for op in args.ops for direction in args.directions for n in args.n for impl in impls
    ]
    err = Console(stderr=True)
    rows, failures = [], 0
    with err.status("") as status:
        for i, (impl, op, direction, n) in enumerate(plan):
            status.update(f"{i + 1}/{len(plan)}: {impl} {op} {direction} {args.dtype} N={n}")
            try:
                result = cases.run_case(impl, op, direction, args.dtype, n)
                if impl == "liger" and result.skipped and result.skipped.startswith("not installed"):
                    continue  # Liger is reported when installed, never required
                rows.extend(report.rows_for(result))
            except Exception as exc:  # a kernel that does not compile is a finding: report it, go on, exit 1
                failures += 1
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failed = cases.CaseResult(
                    impl, op, direction, args.dtype, n, 0, [], skipped=f"failed: {type(exc).__name__}: {text[:200]}"
                )
                rows.extend(report.rows_for(failed))
    meta = report.metadata()
    outputs = {
        "json": lambda: json.dumps(report.to_json(rows, meta), indent=1) + "\n",
        "markdown": lambda: report.to_markdown(rows, meta),
    }
    to_stdout = False
    for kind, render in outputs.items():
        path = getattr(args, kind)
        if path == "-":
            sys.stdout.write(render())
            to_stdout = True
        elif path:
            try:
                with open(path, "w") as f:
                    f.write(render())
            except OSError as exc:
                print(f"{PROG}: error: cannot write --{kind} {path}: {exc.strerror}", file=sys.stderr)
                return 2
    if not to_stdout:
        # not a terminal (a pipe, a file): as wide as the table needs instead of rich's default 80 columns
        Console(width=None if sys.stdout.isatty() else 240).print(report.to_rich(rows, meta))
    return 1 if failures else 0
