"""Compile every kernel variant for a GPU target on a machine without a GPU (Triton's own compiler and ptxas).

Triton's interpreter, which runs the kernels in CI, does not exercise GPU code generation: types it lowers
differently, operations it does not support on some dtypes, layouts, register limits. This builds the forward
and backward kernels with each mode switched on, for Hopper (sm_90), and checks that the loads of a
whole-row tile are 16 bytes wide. ::

    python -m tokennorm.kernels.compile_check       # prints one line per variant; exit 1 on any failure

It must run without TRITON_INTERPRET=1 (then ``triton.jit`` builds compilable kernels).
"""

from __future__ import annotations

import inspect
import re
import sys
import time
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tokennorm.kernels.norm_bwd import DOTS_COMPUTE, DOTS_GIVEN, DOTS_SUMS, norm_bwd_kernel
from tokennorm.kernels.norm_fwd import STATS_COMPUTE, STATS_GIVEN, STATS_MOMENTS, norm_fwd_kernel

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
        elif name in ("MEAN", "RSTD", "DW_PARTIAL", "DB_PARTIAL", "ROW_DOTS"):
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
            for single, stats, persistent in ((True, STATS_COMPUTE, False), (True, STATS_COMPUTE, True),
                                              (False, STATS_COMPUTE, False), (True, STATS_MOMENTS, False),
                                              (False, STATS_MOMENTS, False), (False, STATS_GIVEN, False)):
                if dtype != "bf16" and (stats != STATS_COMPUTE or persistent):
                    continue
                out.append((f"fwd {dtype} {'rms' if is_rms else 'ln'} {'tile' if single else 'chunks'} "
                            f"stats={stats}{' persistent' if persistent else ''}", norm_fwd_kernel, dtype, dict(
                                IS_RMS=is_rms, HAS_WEIGHT=True, HAS_BIAS=not is_rms, HAS_RESIDUAL=True,
                                HAS_DROPOUT=True, STORE_H=True, STORE_STATS=True, STATS=stats, BLOCK_M=2 if single else 1,
                                BLOCK_N=1024, SINGLE_CHUNK=single, PERSISTENT=persistent), 4))
            for single, dots in ((True, DOTS_COMPUTE), (False, DOTS_COMPUTE), (False, DOTS_SUMS), (False, DOTS_GIVEN)):
                if dtype != "bf16" and dots != DOTS_COMPUTE:
                    continue
                out.append((f"bwd {dtype} {'rms' if is_rms else 'ln'} {'tile' if single else 'chunks'} dots={dots}",
                            norm_bwd_kernel, dtype, dict(
                                IS_RMS=is_rms, HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=not is_rms,
                                HAS_DH_IN=True, HAS_DROPOUT=True, STORE_DRES=True, DOTS=dots,
                                BLOCK_M=2 if single else 1, BLOCK_N=1024, SINGLE_CHUNK=single), 4))
    return out


def main() -> int:
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
            # 1024 bf16 over 128 threads: 8 per thread, one 16-byte load each for x and the residual
            wide = len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.v4\.b32", ptx))
            if wide == 0:
                failures += 1
                note = "  FAIL: no 16-byte loads"
            else:
                note = f"  {wide} × 16-byte loads"
        print(f"ok   {label}{note}")
    print(f"{failures} failures, {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
