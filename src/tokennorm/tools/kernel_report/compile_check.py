"""Compile every kernel mode for a GPU target on a machine without a GPU (Triton's own compiler and ptxas).

Triton's interpreter, which runs the kernels in CI, does not exercise GPU code generation: types it lowers
differently, operations it does not support on some dtypes, layouts, register limits, atomics. This builds
each kernel (rows, chunked, long rows, segment; forward and backward) in each of its modes with every switch
on, and issue 18's (AdaLN's gate and modulation in those, DyT, channels-first LayerNorm), for Hopper (sm_90),
and checks what the design claims of the PTX: 16-byte loads and stores of x, γ, β and y in the bf16 rows,
DyT and channels-first kernels, cp.async where a loop prefetches, the cooperative long-row kernels' atomics.

    python -m tokennorm.tools.kernel_report.compile_check            # one line per variant; exit 1 on any failure
    python -m tokennorm.tools.kernel_report.compile_check --configs  # default configs: registers, spills, occupancy

``--configs`` reports, for the configurations tokennorm picks at each row length of the benchmark sweep (bf16
LayerNorm on an H100-sized machine; then issue 18's kernels at their models' widths, ``ISSUE18_WIDTHS``), the
registers and stack (spills) per thread from the compiled binary,
shared memory, how many programs fit on one SM (Hopper: 64K registers, 64 warps, 32 blocks, 227 KB shared
memory per SM) against the programs per SM the config launches, and the PTX's 16-byte loads/stores and
barriers per program. It exits 1 if a config launches more programs per SM than fit (a persistent grid must be
resident; the long-row kernel's deadlock argument relies on it). It must run without TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, NamedTuple, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tokennorm.kernels import config as kconfig
from tokennorm.kernels.channels_first import channels_first_backward_kernel, channels_first_forward_kernel
from tokennorm.kernels.chunked import chunked_forward_kernel
from tokennorm.kernels.elementwise import dyt_backward_kernel, dyt_forward_kernel
from tokennorm.kernels.long_rows import long_rows_backward_kernel, long_rows_forward_kernel
from tokennorm.kernels.rows import rows_backward_kernel, rows_forward_kernel
from tokennorm.kernels.segment import segment_backward_kernel, segment_forward_kernel

TARGET = GPUTarget("cuda", 90, 32)
# Arguments Triton specializes as multiples of 16 at a typical launch (aligned pointers, row lengths, strides).
_ALIGNED = {
    "X",
    "RES",
    "W",
    "B",
    "Y",
    "H",
    "DY",
    "DH_IN",
    "DX",
    "DRES",
    "N",
    "seg_n",
    "stride_x",
    "stride_res",
    "stride_y",
    "stride_h",
    "stride_dy",
    "stride_dh_in",
    "stride_dx",
    "stride_dres",
    "GATE",
    "SHIFT",
    "SCALE",
    "stride_gate",
    "stride_shift",
    "stride_scale",
    "C",
    "S",
    "stride_item",
}
# Pointers to statistics, partials and sums: the accumulation dtype.
_ACC_POINTERS = {
    "MEAN",
    "RSTD",
    "SEG_MEAN",
    "SEG_M2",
    "DW_PARTIAL",
    "DB_PARTIAL",
    "PARTIALS",
    "ROW_SUMS",
    "ROW_MEANS",
    "DSHIFT",
    "DSCALE",
    "DGATE",
    "DALPHA_PARTIAL",
}
_FLOAT_SCALARS = {"eps", "eps_lo", "dropout_p", "alpha", "alpha_lo"}
_INT_NAMES = {"M", "N", "C", "S"}  # upper-case names that are not pointers
# Hopper SM limits
SM_REGISTERS, SM_WARPS, SM_BLOCKS, SM_SHARED = 65536, 64, 32, 227 * 1024


class Variant(NamedTuple):
    label: str
    kernel: Any
    dtype: str  # element type of the data pointers: bf16, fp16, fp32, fp64
    constexprs: dict  # compile-time switches; None for a pointer the launch leaves out
    num_warps: int
    expect: tuple = ()  # PTX claims to check: "v4 loads", "v4 stores", "cp.async", "atomics"


def compile_kernel(kernel: Any, dtype: str, constexprs: dict, num_warps: int, maxnreg: Optional[int] = None) -> Any:
    """Compile ``kernel`` for sm_90 as a launch with these switches would (pointers aligned to 16 bytes)."""
    names = list(inspect.signature(kernel.fn).parameters)
    acc = "fp64" if dtype == "fp64" else "fp32"
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "SEED":
            signature[name] = "*i64"
        elif name == "SYNC":
            signature[name] = "*i32"
        elif name in _ACC_POINTERS:
            signature[name] = f"*{acc}"
        elif name.isupper() and name not in _INT_NAMES:
            signature[name] = f"*{dtype}"
        elif name in _FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    attrs = {
        (i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name in _ALIGNED and name not in constexprs
    }
    src = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    options = {"num_warps": num_warps}
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=TARGET, options=options)


_FWD_SWITCHES = dict(
    IS_RMS=False,
    WEIGHT_OFFSET=1.0,
    HAS_WEIGHT=True,
    HAS_BIAS=True,
    HAS_RESIDUAL=True,
    HAS_DROPOUT=True,
    STORE_H=True,
    STORE_STATS=True,
    HAS_GATE=False,
    HAS_MOD=False,
)
_BWD_SWITCHES = dict(
    IS_RMS=False,
    WEIGHT_OFFSET=1.0,
    HAS_WEIGHT=True,
    COMPUTE_DW=True,
    COMPUTE_DB=True,
    HAS_DH_IN=True,
    HAS_DROPOUT=True,
    STORE_DRES=True,
    HAS_BIAS=False,
    HAS_MOD=False,
    HAS_GATE=False,
)
# AdaLN's inputs and outputs, left out (None) where its switches are off
_NO_FWD_MODULATION = dict(GATE=None, SHIFT=None, SCALE=None)
_NO_BWD_MODULATION = dict(X=None, B=None, SCALE=None, GATE=None, DSCALE=None, DGATE=None)


def variants() -> list[Variant]:
    """Every mode of every kernel with every switch on (LayerNorm and RMSNorm), in bf16; the main modes also in
    fp16, fp32 and fp64."""
    out = []
    for dtype in ("bf16", "fp16", "fp32", "fp64"):
        main = dtype == "bf16"
        for is_rms in (False, True):
            norm = "rms" if is_rms else "ln"
            fwd = dict(_FWD_SWITCHES, IS_RMS=is_rms, HAS_BIAS=not is_rms)
            bwd = dict(_BWD_SWITCHES, IS_RMS=is_rms, COMPUTE_DB=not is_rms)
            for stages in (1, 2) if main else (1,):
                pipelined = ("cp.async",) if stages > 1 else ()
                out.append(
                    Variant(
                        f"rows fwd {dtype} {norm} stages={stages}",
                        rows_forward_kernel,
                        dtype,
                        dict(fwd, BLOCK_M=1, BLOCK_N=1024, NUM_STAGES=stages),
                        4,
                        (("v4 loads", "v4 stores") if main else ()) + pipelined,
                    )
                )
                out.append(
                    Variant(
                        f"rows bwd {dtype} {norm} stages={stages}",
                        rows_backward_kernel,
                        dtype,
                        dict(bwd, BLOCK_M=1, BLOCK_N=1024, NUM_STAGES=stages, MOD_SUMS=False),
                        4,
                        (("v4 loads",) if main else ()) + pipelined,
                    )
                )
            out.append(
                Variant(f"chunked fwd {dtype} {norm}", chunked_forward_kernel, dtype, dict(fwd, BLOCK_N=1024), 4)
            )
            for exchange in ("cooperative", "publish", "finish") if main else ("cooperative",):
                atomics = ("atomics",) if exchange == "cooperative" else ()
                out.append(
                    Variant(
                        f"long_rows fwd {dtype} {norm} {exchange}",
                        long_rows_forward_kernel,
                        dtype,
                        dict(fwd, EXCHANGE=exchange, BLOCK_N=1024, S_BLOCK=8),
                        4,
                        atomics,
                    )
                )
                out.append(
                    Variant(
                        f"long_rows bwd {dtype} {norm} {exchange}",
                        long_rows_backward_kernel,
                        dtype,
                        dict(bwd, EXCHANGE=exchange, BLOCK_N=1024, S_BLOCK=8),
                        4,
                        atomics,
                    )
                )
            if main or dtype == "fp64":
                seg = dict(IS_RMS=is_rms, WEIGHT_OFFSET=1.0, BLOCK_M=2, BLOCK_N=512)
                for pass_ in ("moments", "apply"):
                    out.append(
                        Variant(
                            f"segment fwd {dtype} {norm} {pass_}",
                            segment_forward_kernel,
                            dtype,
                            dict(seg, PASS=pass_, HAS_WEIGHT=True, HAS_BIAS=not is_rms),
                            4,
                        )
                    )
                for pass_ in ("sums", "dx"):
                    out.append(
                        Variant(
                            f"segment bwd {dtype} {norm} {pass_}",
                            segment_backward_kernel,
                            dtype,
                            dict(bwd, **seg, PASS=pass_),
                            4,
                        )
                    )
    return out + issue18_variants()


def issue18_variants() -> list[Variant]:
    """Issue 18's kernels with every switch on: AdaLN (gate and modulation) in each norm kernel — bf16, LayerNorm
    and RMSNorm, the rows backward with per-sample sums and with per-token gradients — and DyT and channels-first
    LayerNorm in bf16, fp16, fp32 and fp64; 16-byte loads (and stores) claimed where the data is contiguous."""
    out = []
    for is_rms in (False, True):
        norm = "rms" if is_rms else "ln"
        fwd = dict(_FWD_SWITCHES, IS_RMS=is_rms, HAS_GATE=True, HAS_MOD=True, HAS_DROPOUT=False)
        bwd = dict(_BWD_SWITCHES, IS_RMS=is_rms, HAS_BIAS=True, HAS_MOD=True, HAS_GATE=True, HAS_DROPOUT=False)
        out.append(
            Variant(
                f"ada rows fwd bf16 {norm}",
                rows_forward_kernel,
                "bf16",
                dict(fwd, BLOCK_M=1, BLOCK_N=1024, NUM_STAGES=2),
                4,
                ("v4 loads", "v4 stores", "cp.async"),
            )
        )
        for sums in (True, False):
            out.append(
                Variant(
                    f"ada rows bwd bf16 {norm} {'per-sample' if sums else 'per-token'}",
                    rows_backward_kernel,
                    "bf16",
                    dict(bwd, BLOCK_M=1, BLOCK_N=1024, NUM_STAGES=2, MOD_SUMS=sums),
                    4,
                    ("v4 loads", "cp.async"),
                )
            )
        out.append(Variant(f"ada chunked fwd bf16 {norm}", chunked_forward_kernel, "bf16", dict(fwd, BLOCK_N=1024), 4))
        out.append(
            Variant(
                f"ada long_rows fwd bf16 {norm}",
                long_rows_forward_kernel,
                "bf16",
                dict(fwd, EXCHANGE="cooperative", BLOCK_N=1024, S_BLOCK=8),
                4,
                ("atomics",),
            )
        )
        out.append(
            Variant(
                f"ada long_rows bwd bf16 {norm}",
                long_rows_backward_kernel,
                "bf16",
                dict(bwd, EXCHANGE="cooperative", BLOCK_N=1024, S_BLOCK=8),
                4,
                ("atomics",),
            )
        )
        for pass_ in ("sums", "dx"):
            out.append(
                Variant(
                    f"ada segment bwd bf16 {norm} {pass_}",
                    segment_backward_kernel,
                    "bf16",
                    dict(bwd, IS_RMS=is_rms, WEIGHT_OFFSET=1.0, BLOCK_M=2, BLOCK_N=512, PASS=pass_),
                    4,
                )
            )
    for dtype in ("bf16", "fp16", "fp32", "fp64"):
        main = dtype == "bf16"
        out.append(
            Variant(
                f"dyt fwd {dtype}",
                dyt_forward_kernel,
                dtype,
                dict(
                    HAS_RESIDUAL=True,
                    HAS_WEIGHT=True,
                    HAS_BIAS=True,
                    ALPHA_TENSOR=True,
                    STORE_H=True,
                    BLOCK_M=4,
                    BLOCK_N=1024,
                    NUM_STAGES=2,
                ),
                8,
                ("v4 loads", "v4 stores", "cp.async") if main else (),
            )
        )
        out.append(
            Variant(
                f"dyt bwd {dtype}",
                dyt_backward_kernel,
                dtype,
                dict(
                    HAS_WEIGHT=True,
                    ALPHA_TENSOR=True,
                    HAS_DH_IN=True,
                    STORE_DRES=True,
                    COMPUTE_DALPHA=True,
                    COMPUTE_DW=True,
                    COMPUTE_DB=True,
                    BLOCK_M=2,
                    BLOCK_N=1024,
                    NUM_STAGES=2,
                ),
                8,
                ("v4 loads", "v4 stores", "cp.async") if main else (),
            )
        )
        out.append(
            Variant(
                f"channels_first fwd {dtype}",
                channels_first_forward_kernel,
                dtype,
                dict(HAS_WEIGHT=True, HAS_BIAS=True, STORE_STATS=True, BLOCK_T=32, BLOCK_C=128, NUM_STAGES=2),
                8,
                ("v4 loads", "v4 stores", "cp.async") if main else (),
            )
        )
        out.append(
            Variant(
                f"channels_first bwd {dtype}",
                channels_first_backward_kernel,
                dtype,
                dict(HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=True, BLOCK_T=16, BLOCK_C=128, NUM_STAGES=2),
                4,
                ("v4 loads", "v4 stores", "cp.async") if main else (),
            )
        )
    return out


def ptx_counts(ptx: str) -> dict:
    """What the PTX says about memory access: 16-byte global loads and stores (straight, or cp.async into
    shared memory), barriers, atomics."""
    v4_loads = len(re.findall(r"ld\.global(?:\.[a-z0-9:]+)*\.v4\.(?:b32|f32|u32)", ptx))
    cp_async = len(re.findall(r"cp\.async\.(?:ca|cg)\.shared\.global", ptx))
    cp_async16 = len(
        re.findall(r"cp\.async\.(?:ca|cg)\.shared\.global(?:\.[a-z0-9:]+)* \[[^\]]+\], \[[^\]]+\], (?:0x10|16)\b", ptx)
    )
    return dict(
        v4_loads=v4_loads + cp_async16,
        v4_stores=len(re.findall(r"st\.global(?:\.[a-z0-9:]+)*\.v4\.(?:b32|f32|u32)", ptx)),
        cp_async=cp_async,
        bar_sync=len(re.findall(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx)),
        atomics=len(re.findall(r"\batom\.(?:[a-z0-9_]+\.)*(?:add|inc)", ptx)),
    )


def check_variant(v: Variant) -> tuple[bool, str]:
    """Compile one variant: (whether its PTX has what it claims, a note on what was found or is missing)."""
    counts = ptx_counts(compile_kernel(v.kernel, v.dtype, v.constexprs, v.num_warps).asm["ptx"])
    missing = []
    if "v4 loads" in v.expect and counts["v4_loads"] == 0:
        missing.append("no 16-byte loads")
    if "v4 stores" in v.expect and counts["v4_stores"] == 0:
        missing.append("no 16-byte stores")
    if "cp.async" in v.expect and counts["cp_async"] == 0:
        missing.append("loop not pipelined (no cp.async)")
    if "atomics" in v.expect and counts["atomics"] == 0:
        missing.append("no atomics")
    notes = [
        f"{counts['v4_loads']} × 16-byte loads" if "v4 loads" in v.expect else "",
        f"{counts['v4_stores']} × 16-byte stores" if "v4 stores" in v.expect else "",
        f"{counts['cp_async']} × cp.async" if "cp.async" in v.expect else "",
        f"{counts['atomics']} × atomics" if "atomics" in v.expect else "",
    ]
    return (False, "; ".join(missing)) if missing else (True, "  ".join(n for n in notes if n))


def resources(compiled: Any) -> Optional[tuple[int, int]]:
    """(registers per thread, stack bytes per thread) of a compiled kernel, from the bundled cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def programs_per_sm(regs: int, num_warps: int, shared: int) -> int:
    """Programs resident on one Hopper SM: registers are allocated per warp in units of 256; each program
    reserves 1 KB of shared memory besides its own."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = SM_REGISTERS // (regs_per_warp * num_warps)
    by_shared = (SM_SHARED + 1024) // (shared + 1024)
    return max(0, min(by_regs, SM_WARPS // num_warps, SM_BLOCKS, by_shared))


# The benchmark sweep's row lengths, and the machine the default configs are sized for (H100 SXM).
CONFIG_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576)
H100 = kconfig.DeviceFacts(sms=132, l2_bytes=50 << 20)


def default_launches(n: int, facts: kconfig.DeviceFacts = H100) -> list[tuple[str, Any, kconfig.KernelConfig, dict]]:
    """(label, kernel, config, constexprs) of each kernel the default plans launch for bf16 LayerNorm rows of n
    elements (no residual, forward storing statistics, backward with dγ and dβ)."""
    fwd_cfg = kconfig.forward_config(n, 2, 4, facts)
    bwd_cfg = kconfig.backward_config(n, 4, facts)
    fwd = dict(
        _FWD_SWITCHES,
        WEIGHT_OFFSET=0.0,
        HAS_RESIDUAL=False,
        HAS_DROPOUT=False,
        STORE_H=False,
        BLOCK_N=fwd_cfg.block_n,
        RES=None,
        SEED=None,
        H=None,
        tokens=1,
        **_NO_FWD_MODULATION,
    )
    bwd = dict(
        _BWD_SWITCHES,
        WEIGHT_OFFSET=0.0,
        HAS_DH_IN=False,
        HAS_DROPOUT=False,
        STORE_DRES=False,
        BLOCK_N=bwd_cfg.block_n,
        DH_IN=None,
        SEED=None,
        DRES=None,
        tokens=1,
        **_NO_BWD_MODULATION,
    )
    out = []
    if fwd_cfg.mode == kconfig.ROWS:
        out.append(
            (
                "fwd rows",
                rows_forward_kernel,
                fwd_cfg,
                dict(fwd, BLOCK_M=fwd_cfg.block_m, NUM_STAGES=fwd_cfg.num_stages),
            )
        )
    elif fwd_cfg.mode == kconfig.CHUNKED:
        out.append(("fwd chunked", chunked_forward_kernel, fwd_cfg, fwd))
    else:
        s_block = kconfig.pow2(kconfig.long_rows_segments(n, fwd_cfg))
        out.append(
            ("fwd long_rows", long_rows_forward_kernel, fwd_cfg, dict(fwd, EXCHANGE="cooperative", S_BLOCK=s_block))
        )
    if bwd_cfg.mode == kconfig.ROWS:
        out.append(
            (
                "bwd rows",
                rows_backward_kernel,
                bwd_cfg,
                dict(bwd, BLOCK_M=bwd_cfg.block_m, NUM_STAGES=bwd_cfg.num_stages, MOD_SUMS=False, DSHIFT=None),
            )
        )
    elif bwd_cfg.mode == kconfig.LONG_ROWS:
        s_block = kconfig.pow2(kconfig.long_rows_segments(n, bwd_cfg))
        out.append(
            ("bwd long_rows", long_rows_backward_kernel, bwd_cfg, dict(bwd, EXCHANGE="cooperative", S_BLOCK=s_block))
        )
    else:
        for pass_ in ("sums", "dx"):
            out.append(
                (
                    f"bwd segment {pass_}",
                    segment_backward_kernel,
                    bwd_cfg,
                    dict(bwd, PASS=pass_, BLOCK_M=bwd_cfg.block_m),
                )
            )
    return out


# Issue 18's default launches at the widths models use: AdaLN-Zero at DiT-XL's 1152 and Flux's 3072 (bf16,
# gated residual, per-sample modulation), DyT at 1024 and 4096, channels-first LayerNorm at ConvNeXt's stage
# widths 96–768 and 1536 (forward only beyond the backward's register limit).
ISSUE18_WIDTHS = {"ada": (1152, 3072), "dyt": (1024, 4096), "channels_first": (96, 192, 384, 768, 1536)}


def issue18_launches(facts: kconfig.DeviceFacts = H100) -> list[tuple[int, str, Any, kconfig.KernelConfig, dict]]:
    """(width, label, kernel, config, constexprs) of each kernel issue 18's default plans launch, bf16: AdaLN-Zero's
    gated residual + modulated LayerNorm (no γ/β, as DiT; pre-norm; per-sample modulation), DyT with γ and β,
    channels-first LayerNorm with γ and β."""
    from tokennorm.kernels import plan as kplan

    def switches(p, **absent):  # the plan's constexprs without launch options, pointers left out as None
        return {k: v for k, v in p.constexprs.items() if k not in ("num_warps", "maxnreg")} | absent

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    out = []
    for n in ISSUE18_WIDTHS["ada"]:
        fwd_cfg, bwd_cfg = kconfig.ada_forward_config(n, 2, 4, facts), kconfig.ada_backward_config(n, 4, facts)
        assert fwd_cfg.mode == bwd_cfg.mode == kconfig.ROWS, n  # the widths listed are whole-row tiles
        fwd = kplan.forward_plan(
            n, bf16, False, False, bf16, bf16, 1e-6, 0.0, 0.0, False, True, cpu, fwd_cfg, True, True
        )
        bwd = kplan.backward_plan(
            n, bf16, bf16, bf16, False, True, 0.0, 0.0, False, False, False, cpu, bwd_cfg, False, True, True, True
        )
        out.append((n, "fwd adaln-rows", rows_forward_kernel, fwd_cfg, switches(fwd, W=None, B=None, SEED=None)))
        out.append((n, "bwd adaln-rows", rows_backward_kernel, bwd_cfg, switches(bwd, W=None, B=None, SEED=None)))
    for n in ISSUE18_WIDTHS["dyt"]:
        fwd = kplan.dyt_plan(n, bf16, None, None, True, True, True, cpu)
        bwd = kplan.dyt_backward_plan(n, bf16, bf16, True, True, False, False, True, True, True, cpu)
        out.append((n, "fwd dyt", dyt_forward_kernel, fwd.config, switches(fwd, RES=None, H=None)))
        out.append((n, "bwd dyt", dyt_backward_kernel, bwd.config, switches(bwd, DH_IN=None, DRES=None)))
    for c in ISSUE18_WIDTHS["channels_first"]:
        for backward in (False, True):
            p = kplan.channels_first_plan(c, bf16, True, True, True, backward, True, True, cpu)
            if p is not None:
                kernel = channels_first_backward_kernel if backward else channels_first_forward_kernel
                out.append((c, f"{'bwd' if backward else 'fwd'} channels-first", kernel, p.config, switches(p)))
    return out


def _report_line(n: int, label: str, kernel: Any, cfg: kconfig.KernelConfig, consts: dict) -> Optional[bool]:
    """Print one config's line; whether its persistent grid fits (None: no cuobjdump)."""
    compiled = compile_kernel(kernel, "bf16", consts, cfg.num_warps, cfg.max_registers)
    res = resources(compiled)
    if res is None:
        print("no cuobjdump in this triton install")
        return None
    regs, stack = res
    fit = programs_per_sm(regs, cfg.num_warps, compiled.metadata.shared)
    counts = ptx_counts(compiled.asm["ptx"])
    launched = cfg.programs_per_sm if cfg.mode != kconfig.SEGMENT else 0
    bad = launched > fit
    tile = f"{cfg.block_m}×{cfg.block_n}"
    print(
        f"{n:>8}  {label:17}  {tile:>12}  {cfg.num_warps:5d}  {regs:4d}  {stack:5d}  "
        f"{compiled.metadata.shared / 1024:7.1f}  {fit:6d}  {launched or '–':>11}  {counts['v4_loads']:6d}  "
        f"{counts['v4_stores']:6d}  {counts['bar_sync']:8d}{'  FAIL: does not fit' if bad else ''}",
        flush=True,
    )
    return not bad


def report_configs() -> int:
    """Registers, spills, shared memory and occupancy of the default configs over the benchmark's row lengths
    (bf16 LayerNorm, H100-sized machine), then of issue 18's kernels at their models' widths; exit 1 if a config
    launches more programs per SM than fit."""
    print(
        f"{'N':>8}  {'kernel':17}  {'tile':>12}  warps  regs  stack  smem KB  fit/SM  launched/SM  "
        f"16B ld  16B st  bar.sync"
    )
    failures = 0
    launches = [(n, *launch) for n in CONFIG_LENGTHS for launch in default_launches(n)] + issue18_launches()
    for n, label, kernel, cfg, consts in launches:
        fits = _report_line(n, label, kernel, cfg, consts)
        if fits is None:
            return 1
        failures += not fits
    return 1 if failures else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokennorm.tools.kernel_report.compile_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--configs", action="store_true", help="report registers, spills and occupancy of the default configs instead"
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check compiles for a GPU: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if args.configs:
        return report_configs()
    failures = 0
    start = time.perf_counter()
    for v in variants():
        try:
            ok, note = check_variant(v)
        except Exception as exc:  # report every variant, then fail
            ok, note = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {v.label}  {note}".rstrip())
    print(f"{failures} failures, {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
