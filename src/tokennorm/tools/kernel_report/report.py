"""The kernel report's rows and their three renderings: a rich table, JSON, and markdown for RESULTS.md."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import triton

from tokennorm.tools.kernel_report import analysis, cases, hopper

MODELLED = (hopper.H100, hopper.H200)


@dataclass
class Row:
    """One kernel launch of one case (a case that launches two kernels gives two rows), or a skipped case."""

    case: cases.CaseResult
    part: str  # "" or "1/2", "2/2", ...
    launch: Optional[cases.Captured] = None
    kernel: Optional[analysis.KernelAnalysis] = None

    @property
    def itemsize(self) -> int:
        return cases.torch_dtype(self.case.dtype).itemsize

    @property
    def bytes_per_element(self) -> int:
        return cases.bytes_per_element(self.case.op, self.case.direction, self.itemsize)

    def issue_share(self, device: hopper.Device) -> float:
        assert self.kernel is not None
        return self.kernel.issue_share(device, self.bytes_per_element)


def rows_for(result: cases.CaseResult) -> list[Row]:
    if result.skipped is not None:
        return [Row(result, "")]
    count = len(result.launches)
    return [
        Row(result, f"{i + 1}/{count}" if count > 1 else "", c, analysis.analyze(c.kernel, c.grid, c.tiling))
        for i, c in enumerate(result.launches)
    ]


def metadata() -> dict[str, Any]:
    def version(package: str) -> Optional[str]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.date.today().isoformat(),
        "target": f"sm_{hopper.ARCH}",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "tokennorm": version("tokennorm"),
        "liger_kernel": version("liger-kernel"),
        "host": platform.machine(),
        "elements_per_case": cases.ELEMENTS,
        "issue_per_sm_per_cycle": hopper.ISSUE_PER_SM_PER_CYCLE,
        "model": {d.name: dataclasses.asdict(d) for d in MODELLED},
    }


# ------------------------------------------------------------------------------------------------ columns


def _n(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _grid(grid: tuple[int, int, int]) -> str:
    dims = list(grid)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return "×".join(map(str, dims))


def _widths(row: Row) -> str:
    """Bytes per thread of each data tensor's global loads, then (after →) stores, e.g. ``X16 W8 B8 → Y16``."""
    k, data = row.kernel, row.launch.data_tensors

    def part(kind: str) -> str:
        out = []
        for name in data:
            widths = k.widths(name, kind)
            if widths:
                out.append(f"{name.removesuffix('_ptr')}{'/'.join(map(str, widths))}")
        return " ".join(out) or "–"

    return f"{part('load')} → {part('store')}"


def _math(k: analysis.KernelAnalysis) -> str:
    return " ".join(f"{op.removesuffix('.f32')}×{count}" for op, count in k.math.items()) or "–"


def _occupancy(k: analysis.KernelAnalysis) -> str:
    return f"{k.occupancy.programs} ({k.occupancy.limited_by[0]})"


# (header, value of a kernel row): one definition for the rich table and the markdown
COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("kernel", lambda r: r.kernel.name),
    ("grid", lambda r: _grid(r.kernel.grid)),
    ("tile · warps", lambda r: f"{r.launch.tile} · {r.kernel.num_warps}"),
    ("regs / spill B", lambda r: f"{r.kernel.registers} / {r.kernel.spill_bytes}"),
    ("smem KB", lambda r: f"{r.kernel.shared / 1024:.1f}"),
    ("prog/SM · warps/SM", lambda r: f"{_occupancy(r.kernel)} · {r.kernel.warps_per_sm}"),
    ("load → store B/thread", _widths),
    ("bar.sync / shfl", lambda r: f"{r.kernel.bar_sync} / {r.kernel.shuffles}"),
    ("div/sqrt", lambda r: _math(r.kernel)),
    ("cp.async", lambda r: str(r.kernel.cp_async)),
    ("SASS / loop", lambda r: f"{r.kernel.sass_main} / {r.kernel.sass_hot or '–'}"),
    ("SASS/elem", lambda r: f"{r.kernel.sass_per_element:.1f}"),
    (
        "issue " + " / ".join(d.name.split()[0] for d in MODELLED),
        lambda r: " / ".join(f"{100 * r.issue_share(d):.0f}%" for d in MODELLED),
    ),
]
CASE_COLUMNS: list[tuple[str, Callable[[Row], str]]] = [
    ("impl", lambda r: r.case.impl),
    ("op", lambda r: r.case.op),
    ("dir", lambda r: f"{r.case.direction} {r.part}".strip()),
    ("N", lambda r: _n(r.case.n)),
]

LEGEND = (
    "grid: programs launched at M·N = {elements:,} elements. tile: rows × columns per program step (ch: the row is "
    "walked in chunks). prog/SM: resident programs per SM, limited by (r)egisters, (w)arps, (s)hared memory or "
    "(b)locks (Hopper: 64K registers, 64 warps, 228 KB, 32 blocks). load → store: bytes per thread of each global "
    "load and store of the data tensors (16 = one 16-byte vector). bar.sync, shfl: in the kernel's code (not the "
    "slow paths). div/sqrt: PTX flavours (rn: correctly rounded; full, approx: fast). SASS: warp-instructions of "
    "the main code; loop: those in the innermost loops over memory. SASS/elem: thread-instructions per element "
    "(kernel_report.analysis). issue: share of the SMs' issue rate (4 warp-instructions per SM per cycle at "
    "{clock:.2f} GHz, 132 SMs) needed to run at copy bandwidth ({copies}) given the op's fewest bytes per element."
)


def legend() -> str:
    copies = ", ".join(
        f"{d.name.split()[0]} {d.copy_bytes_per_s / 1e12:.2f} TB/s {'measured' if d.copy_measured else 'assumed'}"
        for d in MODELLED
    )
    return LEGEND.format(elements=cases.ELEMENTS, clock=hopper.H100.sm_clock_hz / 1e9, copies=copies)


def _cells(row: Row) -> list[str]:
    return [fn(row) for _, fn in CASE_COLUMNS + COLUMNS]


def not_run(rows: Iterable[Row]) -> list[str]:
    """One line per implementation and reason for the cases that launched nothing, e.g.
    ``liger ln, rms fwd/bwd at N = 256K, 1M: refuses rows longer than 65,536 elements``."""
    groups: dict[tuple[str, str], list[cases.CaseResult]] = {}
    for row in rows:
        if row.kernel is None:
            groups.setdefault((row.case.impl, row.case.skipped or ""), []).append(row.case)
    lines = []
    for (impl, reason), group in groups.items():
        ops = ", ".join(dict.fromkeys(c.op for c in group))
        directions = "/".join(dict.fromkeys(c.direction for c in group))
        ns = ", ".join(_n(n) for n in sorted({c.n for c in group}))
        lines.append(f"{impl} {ops} {directions} at N = {ns}: {reason}")
    return lines


def headers() -> list[str]:
    return [h for h, _ in CASE_COLUMNS + COLUMNS]


def to_markdown(rows: Iterable[Row], meta: dict[str, Any]) -> str:
    rows = list(rows)
    lines = [
        f"{meta['date']}, triton {meta['triton']}, torch {meta['torch']}, compiled for {meta['target']} on a "
        f"CPU (fake CUDA driver; nothing ran), liger-kernel {meta['liger_kernel'] or 'not installed'}, "
        f"{'/'.join(sorted({r.case.dtype for r in rows}))}.",
        "",
        "| " + " | ".join(headers()) + " |",
        "|" + "---|" * len(headers()),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in rows if r.kernel]
    skipped = [f"Not run: {line}." for line in not_run(rows)]
    return "\n".join(lines + [""] + ([" ".join(skipped), ""] if skipped else []) + [legend()]) + "\n"


def to_rich(rows: Iterable[Row], meta: dict[str, Any]) -> Any:
    from rich.table import Table

    rows = list(rows)
    caption = "\n".join([*(f"Not run: {line}." for line in not_run(rows)), legend()])
    table = Table(
        title=f"What each launch compiles to ({meta['target']}, triton {meta['triton']})",
        caption=caption,
        caption_justify="left",
    )
    numeric = {
        "N",
        "regs / spill B",
        "smem KB",
        "bar.sync / shfl",
        "cp.async",
        "SASS / loop",
        "SASS/elem",
        *(h for h in headers() if h.startswith("issue")),
    }
    for h in headers():
        table.add_column(h, justify="right" if h in numeric else "left")
    for row in rows:
        if row.kernel is not None:
            table.add_row(*_cells(row))
    return table


def to_json(rows: Iterable[Row], meta: dict[str, Any]) -> dict[str, Any]:
    out = []
    for row in rows:
        entry: dict[str, Any] = {
            "impl": row.case.impl,
            "op": row.case.op,
            "direction": row.case.direction,
            "dtype": row.case.dtype,
            "n": row.case.n,
            "m": row.case.m,
            "part": row.part,
        }
        if row.kernel is None:
            entry["skipped"] = row.case.skipped
        else:
            k = row.kernel
            entry.update(
                dataclasses.asdict(k),
                tile=row.launch.tile,
                data_tensors=list(row.launch.data_tensors),
                occupancy=dict(dataclasses.asdict(k.occupancy), limited_by=k.occupancy.limited_by),
                warps_per_sm=k.warps_per_sm,
                bytes_per_element=row.bytes_per_element,
                issue_share={d.name: row.issue_share(d) for d in MODELLED},
            )
        out.append(entry)
    return {"meta": meta, "legend": legend(), "rows": out}
