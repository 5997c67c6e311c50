"""Compile every kernel variant for a GPU target on a machine without a GPU (Triton's own compiler and ptxas).

Triton's interpreter, which runs the kernels in CI, does not exercise GPU code generation: types it lowers
differently, operations it does not support on some dtypes, layouts, register limits. This builds the forward
and backward kernels with each mode switched on, for Hopper (sm_90), and checks that the loads of a
whole-row tile are 16 bytes wide. ::

    python -m tokennorm.kernels.compile_check       # prints one line per variant; exit 1 on any failure

``--configs [--stages K]`` instead reports, for the launch configurations tokennorm picks at each row length of the
benchmark sweep, the registers and stack (spills) per thread from the compiled binary and how many programs
fit on one SM (Hopper: 64K registers, 64 warps, 32 blocks per SM) — the first questions when a kernel is
slower than its bytes predict, answered without a GPU.

It must run without TRITON_INTERPRET=1 (then ``triton.jit`` builds compilable kernels).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tokennorm.kernels.norm_bwd import DOTS_COMPUTE, DOTS_GIVEN, DOTS_SEGMENTS, DOTS_SUMS, norm_bwd_kernel
from tokennorm.kernels.norm_fwd import STATS_COMPUTE, STATS_GIVEN, STATS_MERGE, STATS_MOMENTS, norm_fwd_kernel

TARGET = GPUTarget("cuda", 90, 32)
# Arguments Triton specializes as multiples of 16 at a typical launch (aligned pointers, row lengths, strides).
_ALIGNED = {"X", "RES", "W", "B", "Y", "H", "DY", "DH_IN", "DX", "DRES", "N", "seg_n",
            "stride_x", "stride_res", "stride_y", "stride_h", "stride_dy", "stride_dh_in", "stride_dx", "stride_dres"}


def _compile(kernel: Any, dtype: str, constexprs: dict[str, Any], num_warps: int) -> Any:
    names = list(inspect.signature(kernel.fn).parameters)
    stat = "fp64" if dtype == "fp64" else "fp32"
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "SEED":
            signature[name] = "*i64"
        elif name in ("MEAN", "RSTD", "SEG_MEAN", "SEG_M2", "DW_PARTIAL", "DB_PARTIAL", "ROW_DOTS"):
            signature[name] = f"*{stat}"
        elif name.isupper() and name not in ("M", "N"):
            signature[name] = f"*{dtype}"
        elif name in ("eps", "eps_lo", "dropout_p", "weight_offset"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name in _ALIGNED}
    src = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def variants() -> list[tuple[str, Any, str, dict[str, Any], int]]:
    """(label, kernel, dtype, constexprs, num_warps) for every mode of both kernels, every switch on."""
    out = []
    for dtype in ("bf16", "fp32", "fp64"):
        for is_rms in (False, True):
            for single, stats, persistent, stages in (
                    (True, STATS_COMPUTE, False, 1), (True, STATS_COMPUTE, True, 1), (True, STATS_COMPUTE, True, 3),
                    (False, STATS_COMPUTE, False, 1), (False, STATS_COMPUTE, False, 3), (True, STATS_MOMENTS, False, 1),
                    (False, STATS_MOMENTS, False, 1), (False, STATS_GIVEN, False, 1), (True, STATS_MERGE, False, 1),
                    (False, STATS_MERGE, False, 1)):
                if dtype != "bf16" and (stats != STATS_COMPUTE or persistent or stages > 1):
                    continue
                out.append((f"fwd {dtype} {'rms' if is_rms else 'ln'} {'tile' if single else 'chunks'} "
                            f"stats={stats}{' persistent' if persistent else ''}{_stages_label(stages)}",
                            norm_fwd_kernel, dtype, dict(
                                IS_RMS=is_rms, HAS_WEIGHT=True, HAS_BIAS=not is_rms, HAS_RESIDUAL=True,
                                HAS_DROPOUT=True, STORE_H=True, STORE_STATS=True, STATS=stats, BLOCK_M=2 if single else 1,
                                BLOCK_N=1024, SINGLE_CHUNK=single, PERSISTENT=persistent, FUSED_SUMS=True,
                                LOOP_STAGES=stages, S_BLOCK=8 if stats == STATS_MERGE else 1), 4))
            for single, dots, stages in ((True, DOTS_COMPUTE, 1), (True, DOTS_COMPUTE, 3), (False, DOTS_COMPUTE, 1),
                                         (False, DOTS_SUMS, 1), (False, DOTS_SUMS, 3), (False, DOTS_GIVEN, 1),
                                         (False, DOTS_GIVEN, 3), (False, DOTS_SEGMENTS, 1),
                                         (False, DOTS_SEGMENTS, 3)):
                if dtype != "bf16" and (dots != DOTS_COMPUTE or stages > 1):
                    continue
                out.append((f"bwd {dtype} {'rms' if is_rms else 'ln'} {'tile' if single else 'chunks'} dots={dots}"
                            f"{_stages_label(stages)}", norm_bwd_kernel, dtype, dict(
                                IS_RMS=is_rms, HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=not is_rms,
                                HAS_DH_IN=True, HAS_DROPOUT=True, STORE_DRES=True, DOTS=dots,
                                BLOCK_M=2 if single else 1, BLOCK_N=1024, SINGLE_CHUNK=single, FUSED_SUMS=True,
                                LOOP_STAGES=stages, S_BLOCK=8 if dots == DOTS_SEGMENTS else 1), 4))
    return out


def _stages_label(stages: int) -> str:
    return f" stages={stages}" if stages > 1 else ""


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
    """Programs resident on one Hopper SM: registers are allocated per warp in units of 256."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = 65536 // (regs_per_warp * num_warps)
    by_shared = 227 * 1024 // shared if shared else 32
    return max(0, min(by_regs, 64 // num_warps, 32, by_shared))


def report_configs(stages: Optional[int] = None) -> int:
    """Registers, spills, shared memory and occupancy of the default configs over the benchmark's row lengths
    (bf16, LN); ``stages`` overrides their loops' pipelining depth."""
    from tokennorm.kernels.config import backward_config, forward_config, pow2

    print(f"{'N':>8}  {'kernel':8}  {'tile':>12}  warps  regs  stack  smem KB  programs/SM")
    for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576):
        bwd = backward_config(n)
        # A split row runs two backward launches: the segment sums, then dx summing them.
        bwd_modes = (("bwd", DOTS_COMPUTE),) if bwd.segments == 1 else (("bwd sums", DOTS_SUMS),
                                                                         ("bwd dx", DOTS_SEGMENTS))
        for name, kernel, cfg, consts in (
            ("fwd", norm_fwd_kernel, forward_config(n), dict(
                IS_RMS=False, HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=False, HAS_DROPOUT=False,
                STORE_H=False, STORE_STATS=True, STATS=STATS_COMPUTE, PERSISTENT=False, S_BLOCK=1)),
            *((label, norm_bwd_kernel, bwd, dict(
                IS_RMS=False, HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=True, HAS_DH_IN=False,
                HAS_DROPOUT=False, STORE_DRES=False, DOTS=dots,
                S_BLOCK=pow2(bwd.segments) if dots == DOTS_SEGMENTS else 1))
              for label, dots in bwd_modes),
        ):
            consts.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SINGLE_CHUNK=cfg.single_chunk, FUSED_SUMS=True,
                          LOOP_STAGES=stages or cfg.num_stages)
            compiled = _compile(kernel, "bf16", consts, cfg.num_warps)
            res = resources(compiled)
            if res is None:
                print("no cuobjdump in this triton install")
                return 1
            regs, stack = res
            fit = programs_per_sm(regs, cfg.num_warps, compiled.metadata.shared)
            tile = f"{cfg.block_m}×{cfg.block_n}{'' if cfg.single_chunk else ' ch'}"
            print(f"{n:>8}  {name:8}  {tile:>12}  {cfg.num_warps:5d}  {regs:4d}  {stack:5d}  "
                  f"{compiled.metadata.shared / 1024:7.1f}  {fit:11d}", flush=True)
    return 0


def main() -> int:
    args = sys.argv[1:]
    if "--configs" in args:
        return report_configs(int(args[args.index("--stages") + 1]) if "--stages" in args else None)
    failures = 0
    start = time.perf_counter()
    for label, kernel, dtype, constexprs, warps in variants():
        try:
            compiled = _compile(kernel, dtype, constexprs, warps)
        except Exception as exc:  # report every variant, then fail
            failures += 1
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        ptx = compiled.asm["ptx"]
        note = ""
        if label.startswith("fwd bf16") and "tile" in label and "stats=0" in label:
            # 1024 bf16 over 128 threads: 8 per thread, one 16-byte load each for x and the residual (straight
            # into registers, or into shared memory by cp.async when the loop is pipelined)
            wide = len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.v4\.b32", ptx)) + len(re.findall(
                r"cp\.async\.(?:ca|cg)\.shared\.global(?:\.[a-z0-9:]+)* \[[^\]]+\], \[[^\]]+\], (?:0x10|16)\b", ptx))
            if wide == 0:
                failures += 1
                note = "  FAIL: no 16-byte loads"
            else:
                note = f"  {wide} × 16-byte loads"
        if "stages=" in label:
            # Pipelined loops load through cp.async into shared memory; without it the depth did nothing.
            copies = len(re.findall(r"cp\.async\.(?:ca|cg)", ptx))
            if copies == 0:
                failures += 1
                note += "  FAIL: loop not pipelined (no cp.async)"
            else:
                note += f"  {copies} × cp.async"
        print(f"{'FAIL' if 'FAIL' in note else 'ok  '} {label}{note}")
    print(f"{failures} failures, {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
