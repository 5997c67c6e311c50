"""Static metrics of one compiled kernel for sm_90: resources, occupancy, memory accesses, and instruction counts.

Sources: the cubin (registers, stack and local memory from cuobjdump; SASS, the machine code that runs), and
the PTX (which tensor each global load or store addresses, and how wide it is: the address is traced back to the
kernel parameter it is computed from).

SASS per element, the model
---------------------------
Each SASS instruction is issued once per warp. The kernel's code is split into

* the *main* code: everything before the first subroutine (ptxas puts the slow paths of correctly rounded
  division and square root in subroutines reached by ``CALL.REL``), without NOPs and without the *cold*
  blocks that only set up such a call (a conditional branch skips them unless an operand is denormal or
  special);
* the *hot* loops: the innermost loops (backward branches) that load or store data in global memory -- the
  chunk loop of a chunked kernel, the row loop of a persistent one (a loop of atomics alone, a program waiting
  for others, is not one);
* the *row* loop: the loop enclosing the hot loops, when there is one (a persistent kernel walking rows in
  chunks).

With ``T = num_warps · 32`` threads, thread-instructions per element are::

    hot · T / elements per hot iteration + (row − hot) · T / elements per row + (main − row) · T / elements per program

(a loop-free kernel: ``main · T / elements per program``). Predicated-off instructions count: they take issue
slots. A software-pipelined loop's prologue and epilogue are counted as per-row code. It is a static count,
not a profile: the share of the issue rate it implies is a bound to compare kernels with, not a prediction.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from tokennorm.tools.kernel_report import cubin, hopper

# ---------------------------------------------------------------------------------------------------- SASS


@dataclass(frozen=True)
class SassInstruction:
    address: int
    predicate: Optional[str]  # e.g. "@!P1"
    opcode: str  # e.g. "LDG.E.128"
    operands: str


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")


def parse_sass(text: str) -> list[SassInstruction]:
    """The instructions of cuobjdump's SASS listing, in address order."""
    return [
        SassInstruction(int(m.group(1), 16), m.group(2).strip() if m.group(2) else None, m.group(3), m.group(4).strip())
        for m in _SASS_LINE.finditer(text)
    ]


def _target(ins: SassInstruction) -> Optional[int]:
    match = _BRANCH_TARGET.search(ins.operands)
    return int(match.group(1), 16) if match else None


@dataclass(frozen=True)
class Loop:
    start: int  # address of the first instruction (the backward branch's target)
    end: int  # address of the backward branch

    def contains(self, other: "Loop") -> bool:
        return self != other and self.start <= other.start and other.end <= self.end

    def __contains__(self, address: int) -> bool:
        return self.start <= address <= self.end


@dataclass
class SassStructure:
    """A kernel's SASS split into main code, cold blocks, subroutines and loops (see the module's docstring)."""

    main: list[SassInstruction]  # cold blocks removed
    cold: list[SassInstruction]
    subroutines: list[SassInstruction]
    loops: list[Loop]
    hot_loops: list[Loop]
    row_loop: Optional[Loop]

    def count(self, where: Optional[list[Loop]] = None) -> int:
        """Main instructions, or those inside any of ``where``."""
        if where is None:
            return len(self.main)
        return sum(any(ins.address in loop for loop in where) for ins in self.main)

    @property
    def hot(self) -> int:
        return self.count(self.hot_loops) if self.hot_loops else 0

    @property
    def row(self) -> int:
        """Instructions in the row loop (hot loops included), or in the hot loops when they are outermost."""
        return self.count([self.row_loop]) if self.row_loop else self.hot

    def opcodes(self, prefix: str) -> int:
        return sum(ins.opcode.startswith(prefix) for ins in self.main)

    def widths(self, prefix: str) -> dict[int, int]:
        """Bytes per thread → count, of the main code's ``prefix`` (LDG, STG, LDGSTS) instructions."""
        out: collections.Counter[int] = collections.Counter()
        for ins in self.main:
            if ins.opcode.split(".")[0] == prefix:
                bits = next((int(p) for p in ins.opcode.split(".")[1:] if p in ("64", "128")), 32)
                if any(p in ("U8", "S8") for p in ins.opcode.split(".")):
                    bits = 8
                elif any(p in ("U16", "S16") for p in ins.opcode.split(".")):
                    bits = 16
                out[bits // 8] += 1
        return dict(sorted(out.items()))


_GLOBAL_MEMORY = ("LDG", "STG", "LDGSTS", "ATOMG", "REDG", "RED")
# Loads and stores of data. A loop whose global accesses are all atomics or strong (acquire, volatile) loads —
# a program waiting for others, as the long-row kernels' arrival counters do — moves no data: not a hot loop.
_DATA_MEMORY = ("LDG", "STG", "LDGSTS")


def _moves_data(opcode: str) -> bool:
    return opcode.split(".")[0] in _DATA_MEMORY and ".STRONG" not in opcode


_COLD_BLOCK_MAX = 12  # the call setups seen are 4-6 instructions (argument moves, return address, CALL, result move)


def sass_structure(text: str) -> SassStructure:
    code = [ins for ins in parse_sass(text) if ins.opcode != "NOP"]
    calls = [t for ins in code if ins.opcode.startswith("CALL.REL") and (t := _target(ins)) is not None]
    first_subroutine = min(calls) if calls else None
    body = [ins for ins in code if first_subroutine is None or ins.address < first_subroutine]
    subroutines = [ins for ins in code if first_subroutine is not None and ins.address >= first_subroutine]
    # the 'BRA self' after the last EXIT pads the code; it never runs
    body = [ins for ins in body if not (ins.opcode == "BRA" and _target(ins) == ins.address)]

    # Cold blocks: a conditional forward branch over a few instructions that set up and make a subroutine call
    # (and may jump over the fast path that follows them).
    cold_ranges = []
    for i, ins in enumerate(body):
        target = _target(ins) if ins.opcode.startswith("BRA") and ins.predicate else None
        if target is not None and target > ins.address:
            skipped = [s for s in body[i + 1 :] if s.address < target]
            if (
                len(skipped) <= _COLD_BLOCK_MAX
                and any(s.opcode.startswith("CALL") for s in skipped)
                and not any(s.opcode.split(".")[0] in _GLOBAL_MEMORY + ("BAR",) for s in skipped)
            ):
                cold_ranges.append((ins.address, target))
    is_cold = lambda a: any(lo < a < hi for lo, hi in cold_ranges)  # noqa: E731
    main = [ins for ins in body if not is_cold(ins.address)]
    cold = [ins for ins in body if is_cold(ins.address)]

    loops = sorted(
        {
            Loop(t, ins.address)
            for ins in main
            if ins.opcode.startswith("BRA") and (t := _target(ins)) is not None and t < ins.address
        },
        key=lambda loop: (loop.start, loop.end),
    )
    touches_memory = {loop: any(ins.address in loop and _moves_data(ins.opcode) for ins in main) for loop in loops}
    memory_loops = [loop for loop in loops if touches_memory[loop]]
    hot = [loop for loop in memory_loops if not any(loop.contains(inner) for inner in memory_loops)]
    outer = [loop for loop in loops if any(loop.contains(h) for h in hot)]
    row_loop = max(outer, key=lambda loop: loop.end - loop.start) if outer else None
    return SassStructure(main, cold, subroutines, loops, hot, row_loop)


# ----------------------------------------------------------------------------------------------------- PTX


@dataclass(frozen=True)
class Access:
    """Global memory instructions of one kind, addressing one kernel argument, of one width per thread."""

    tensor: str  # the kernel parameter the address is computed from ('?' when it cannot be told)
    kind: str  # "load", "store", "cp.async" or "atomic"
    bytes: int  # per thread per instruction
    count: int  # instructions in the PTX


_PTX_STATEMENT = re.compile(r"^\s*(@!?%\w+\s+)?([a-z][\w.:]*)\s*(.*?);\s*$")
_REG = re.compile(r"%[\w]+")
_PARAM = re.compile(r"\[\s*(\w+_param_(\d+))\s*\]")
_TYPE_BYTES = {
    "b8": 1,
    "u8": 1,
    "s8": 1,
    "b16": 2,
    "u16": 2,
    "s16": 2,
    "f16": 2,
    "bf16": 2,
    "b32": 4,
    "u32": 4,
    "s32": 4,
    "f32": 4,
    "b64": 8,
    "u64": 8,
    "s64": 8,
    "f64": 8,
    "b128": 16,
}
_NO_DESTINATION = (
    "st.",
    "bar",
    "barrier",
    "bra",
    "ret",
    "exit",
    "membar",
    "fence",
    "cp.async",
    "red.",
    "prefetch",
    "call",
    "trap",
)


def _split_operands(text: str) -> list[str]:
    out, depth, current = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current.strip())
    return out


def _ptx_statements(ptx: str) -> list[tuple[str, list[str]]]:
    """(opcode, operands) of each instruction in the kernel body."""
    body = ptx.split(".entry", 1)[-1]
    out = []
    for line in body.splitlines():
        line = line.split("//", 1)[0]
        match = _PTX_STATEMENT.match(line)
        if match and not match.group(2).startswith("."):
            out.append((match.group(2), _split_operands(match.group(3))))
    return out


def _width(opcode: str, operands: list[str]) -> int:
    parts = opcode.split(".")
    if opcode.startswith("cp.async"):
        size = operands[2] if len(operands) > 2 else "0"
        return int(size, 0)
    vector = next((int(p[1:]) for p in parts if p in ("v2", "v4", "v8")), 1)
    elem = next((_TYPE_BYTES[p] for p in reversed(parts) if p in _TYPE_BYTES), 0)
    return vector * elem


def ptx_accesses(ptx: str, param_names: list[str]) -> list[Access]:
    """Every global load, store, cp.async and atomic of the kernel, grouped by the argument it addresses.

    ``param_names`` are the kernel's PTX parameters in order (the non-constexpr arguments).
    """
    statements = _ptx_statements(ptx)
    sources: dict[str, set[str]] = collections.defaultdict(set)
    params: dict[str, int] = {}
    for opcode, operands in statements:
        if not operands or opcode.startswith(_NO_DESTINATION) or operands[0].startswith("["):
            continue
        dests = _REG.findall(operands[0])
        if opcode.startswith("ld.param"):
            match = _PARAM.search(operands[1]) if len(operands) > 1 else None
            if match:
                for d in dests:
                    params[d] = int(match.group(2))
            continue
        srcs = set(_REG.findall(" ".join(operands[1:])))
        for d in dests:
            sources[d] |= srcs

    def origin(address: str) -> str:
        seen, todo, found = set(), list(_REG.findall(address)), set()
        while todo:
            reg = todo.pop()
            if reg in seen:
                continue
            seen.add(reg)
            if reg in params:
                found.add(params[reg])
            todo.extend(sources.get(reg, ()))
        names = sorted({param_names[i] for i in found if i < len(param_names)} - {""})
        return "+".join(names) if names else "?"

    counts: collections.Counter[tuple[str, str, int]] = collections.Counter()
    for opcode, operands in statements:
        if opcode.startswith("ld.global"):
            kind, address = "load", operands[1]
        elif opcode.startswith("st.global"):
            kind, address = "store", operands[0]
        elif opcode.startswith("cp.async") and ".global" in opcode:
            kind, address = "cp.async", operands[1]
        elif opcode.startswith(("atom.global", "red.global")):
            kind, address = "atomic", operands[1] if opcode.startswith("atom") else operands[0]
        else:
            continue
        counts[(origin(address), kind, _width(opcode, operands))] += 1
    return [Access(t, k, b, c) for (t, k, b), c in sorted(counts.items())]


_MATH = re.compile(r"^(div|sqrt|rsqrt|rcp)\.")


def ptx_math(ptx: str) -> dict[str, int]:
    """Divisions, square roots and reciprocals by flavour (div.rn.f32: correctly rounded; div.full.f32 and
    *.approx.*: fast), e.g. {"div.rn.f32": 4, "sqrt.rn.f32": 2}."""
    out: collections.Counter[str] = collections.Counter()
    for opcode, _ in _ptx_statements(ptx):
        if _MATH.match(opcode):
            out[opcode] += 1
    return dict(sorted(out.items()))


# -------------------------------------------------------------------------------------------------- kernel


@dataclass(frozen=True)
class Tiling:
    """How many elements (of the op's [M, N] problem) one pass of each level of a kernel's code covers."""

    per_iteration: float  # one iteration of the hot loops (the whole program for a loop-free kernel)
    per_row: float  # one iteration of the row loop (a row tile)
    per_program: float  # one program


@dataclass
class KernelAnalysis:
    name: str
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int  # per thread: stack + local memory
    spill_instructions: int  # STL / LDL in the main code
    shared: int  # bytes of shared memory per program (Triton's, all dynamic; the system's 1 KB not included)
    occupancy: hopper.Occupancy
    accesses: list[Access]
    bar_sync: int  # in the main code
    shuffles: int
    math: dict[str, int]
    mufu: dict[str, int]
    cp_async: int  # LDGSTS in the main code
    sass_main: int
    sass_hot: int  # in the hot loops (0: loop-free)
    sass_row: int
    sass_cold: int
    sass_subroutines: int
    ldg_widths: dict[int, int]
    stg_widths: dict[int, int]
    tiling: Tiling
    sass_per_element: float
    opcodes: dict[str, int] = field(repr=False, default_factory=dict)

    @property
    def warps_per_sm(self) -> int:
        return self.occupancy.programs * self.num_warps

    def issue_share(self, device: hopper.Device, bytes_per_element: float) -> float:
        return self.sass_per_element / device.issue_budget(bytes_per_element)

    def widths(self, tensor: str, kind: str = "load") -> list[int]:
        """Bytes per thread of the ``kind`` instructions addressing ``tensor`` (cp.async counts as a load)."""
        kinds = ("load", "cp.async") if kind == "load" else (kind,)
        return sorted({a.bytes for a in self.accesses if a.tensor == tensor and a.kind in kinds})


def pointer_params(compiled: Any) -> list[str]:
    """The PTX parameters of a compiled kernel (its non-constexpr arguments, in order), by name for pointers and
    as "" for scalars (an address computed from a stride is still attributed to the pointer alone)."""
    return [name if str(ty).startswith("*") else "" for name, ty in compiled.src.signature.items() if ty != "constexpr"]


def sass_per_element(structure: SassStructure, num_warps: int, tiling: Tiling) -> float:
    threads = num_warps * hopper.WARP_SIZE
    if not structure.hot_loops:
        return structure.count() * threads / tiling.per_program
    hot, row = structure.hot, structure.row
    return (
        hot * threads / tiling.per_iteration
        + (row - hot) * threads / tiling.per_row
        + (structure.count() - row) * threads / tiling.per_program
    )


@functools.lru_cache(maxsize=256)
def _read_binary(binary: bytes) -> tuple[cubin.Resources, SassStructure]:
    # one cuobjdump pair per compiled kernel, however many launches of it are analysed
    return cubin.resources(binary), sass_structure(cubin.sass(binary))


def analyze(compiled: Any, grid: tuple[int, int, int], tiling: Tiling) -> KernelAnalysis:
    """Every metric of one compiled kernel (a Triton ``CompiledKernel``) launched on ``grid``."""
    used, structure = _read_binary(compiled.asm["cubin"])
    meta = compiled.metadata
    shared = meta.shared  # cuobjdump's static SHARED is the system's 1 KB reservation, which occupancy() adds
    main_ops = collections.Counter(ins.opcode for ins in structure.main)
    return KernelAnalysis(
        name=meta.name,
        grid=tuple(grid),
        num_warps=meta.num_warps,
        num_stages=meta.num_stages,
        registers=used.registers,
        spill_bytes=used.stack + used.local,
        spill_instructions=structure.opcodes("STL") + structure.opcodes("LDL"),
        shared=shared,
        occupancy=hopper.occupancy(used.registers, meta.num_warps, shared),
        accesses=ptx_accesses(compiled.asm["ptx"], pointer_params(compiled)),
        bar_sync=structure.opcodes("BAR.SYNC"),
        shuffles=structure.opcodes("SHFL"),
        math=ptx_math(compiled.asm["ptx"]),
        mufu={k: v for k, v in sorted(main_ops.items()) if k.startswith("MUFU")},
        cp_async=structure.opcodes("LDGSTS"),
        sass_main=structure.count(),
        sass_hot=structure.hot,
        sass_row=structure.row,
        sass_cold=len(structure.cold),
        sass_subroutines=len(structure.subroutines),
        ldg_widths=structure.widths("LDG"),
        stg_widths=structure.widths("STG"),
        tiling=tiling,
        sass_per_element=sass_per_element(structure, meta.num_warps, tiling),
        opcodes=dict(main_ops.most_common()),
    )
