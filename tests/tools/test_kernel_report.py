"""The kernel report: the fake CUDA driver, the analysis of compiled kernels, the public calls, the CLI.

Kernels compile for sm_90 only outside Triton's interpreter, which this test session turns on (conftest), so
everything that compiles runs in a subprocess without TRITON_INTERPRET. The parsing and the occupancy and
issue-rate arithmetic are checked here directly.
"""

import gc
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

triton = pytest.importorskip("triton")

from tokennorm.tools.kernel_report import analysis, cli, hopper, host_time  # noqa: E402

# ------------------------------------------------------------- compiled for sm_90: one subprocess for all

SCRIPT = """
    import json
    import torch
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import tokennorm
    from tokennorm.tools.kernel_report import analysis, cases, cli, fakecuda

    results = {}
    fakecuda.install()

    # --- the fake driver on a small kernel
    @triton.jit
    def scale_kernel(X, Y, n, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(Y + offs, tl.load(X + offs, mask=mask) * scale, mask=mask)

    x = torch.zeros(4097, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    with fakecuda.capture() as launches:
        scale_kernel[(4,)](x, y, 4096, 2.0, BLOCK=1024, num_warps=4)
        scale_kernel[(5,)](x[1:], y, 4095, 2.0, BLOCK=1024, num_warps=2)  # misaligned pointer, odd n
        scale_kernel[(4,)](x, y, 4096, 3.0, BLOCK=1024, num_warps=4)  # same specialization as the first
    first, second, third = launches
    logged = len(fakecuda.launches())
    fakecuda.clear()
    with fakecuda.recording(False):
        scale_kernel[(4,)](x, y, 4096, 2.0, BLOCK=1024, num_warps=4)
    results["driver"] = {
        "grids": [l.grid for l in launches],
        "warps": [l.num_warps for l in launches],
        "names": [l.name for l in launches],
        "args_first": [a.data_ptr() if torch.is_tensor(a) else a for a in first.args],
        "x_ptr": x.data_ptr(), "y_ptr": y.data_ptr(),
        "named_second": {k: v for k, v in second.named_args.items() if not torch.is_tensor(v)},
        "second_x_is_view": second.named_args["X"].data_ptr() == x.data_ptr() + 2,
        "same_kernel": first.kernel is third.kernel, "distinct_kernel": first.kernel is not second.kernel,
        "kernels_cached": len(scale_kernel.device_caches[0][0]),
        "cubin_is_kernels": first.cubin == first.kernel.asm["cubin"],
        "attrs_first": repr(first.kernel.src.attrs), "attrs_second": repr(second.kernel.src.attrs),
        "n_regs": first.kernel.n_regs, "logged": logged, "log_after_unrecorded": len(fakecuda.launches()),
        "target": repr(first.kernel.metadata.target),
    }

    # --- the analysis of small kernels compiled directly
    @triton.jit
    def copy_kernel(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)

    @triton.jit
    def rms_kernel(X, Y, n, BLOCK: tl.constexpr):  # a row reduction and a correctly rounded division
        offs = tl.arange(0, BLOCK)
        row = tl.program_id(0).to(tl.int64) * n
        x = tl.load(X + row + offs, mask=offs < n, other=0.0).to(tl.float32)
        r = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(x * x, axis=0) / n + 1e-5))
        tl.store(Y + row + offs, (x * r).to(Y.dtype.element_ty), mask=offs < n)

    @triton.jit
    def chunk_sum_kernel(X, OUT, n, BLOCK: tl.constexpr):  # a loop over the row in chunks
        row = tl.program_id(0).to(tl.int64) * n
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(X + row + offs, mask=offs < n, other=0.0).to(tl.float32)
        tl.store(OUT + tl.program_id(0), tl.sum(acc, axis=0))

    def build(kernel, out_type, aligned, warps):
        signature = {"X": "*bf16", kernel.arg_names[1]: out_type, "n": "i32", "BLOCK": "constexpr"}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(3)} if aligned else {}
        src = ASTSource(kernel, signature, constexprs={(3,): 1024}, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

    def summary(kernel, per_iteration, per_program):
        k = analysis.analyze(kernel, (64, 1, 1), analysis.Tiling(per_iteration, per_iteration, per_program))
        return {"regs": k.registers, "spill": k.spill_bytes, "spill_ins": k.spill_instructions,
                "loads": {a.tensor: a.bytes for a in k.accesses if a.kind == "load"},
                "stores": {a.tensor: a.bytes for a in k.accesses if a.kind == "store"},
                "ldg": k.ldg_widths, "bar": k.bar_sync, "shfl": k.shuffles, "math": k.math, "cp": k.cp_async,
                "main": k.sass_main, "hot": k.sass_hot, "cold": k.sass_cold, "sub": k.sass_subroutines,
                "per_elem": k.sass_per_element, "programs": k.occupancy.programs, "limit": k.occupancy.limited_by,
                "shared": k.shared}

    results["analysis"] = {
        "copy": summary(build(copy_kernel, "*bf16", True, 4), 1024, 1024),
        "copy_unaligned": summary(build(copy_kernel, "*bf16", False, 4), 1024, 1024),
        "rms": summary(build(rms_kernel, "*bf16", True, 4), 1024, 1024),
        "chunks": summary(build(chunk_sum_kernel, "*fp32", True, 4), 1024, 65536),
    }

    # --- the public API's real launches, and the CLI end to end
    n, m = 4096, 64
    x = torch.empty(m, n, dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(n, dtype=torch.bfloat16, requires_grad=True)
    b = torch.empty(n, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.empty(m, n, dtype=torch.bfloat16)
    with cases.tokennorm_on_fake_gpu(fakecuda.installed_device()):
        with fakecuda.capture() as forward:
            y = tokennorm.layer_norm(x, (n,), w, b)
        with fakecuda.capture() as backward:
            y.backward(dy)

    def pointers(launches):
        return [sorted(a.data_ptr() for a in l.args if torch.is_tensor(a)) for l in launches]

    code = cli.main(["--n", "1K,4K", "--ops", "ln", "--no-liger", "--json", "report.json", "--markdown", "report.md"])
    results["public"] = {
        "forward": pointers(forward), "backward": pointers(backward),
        "x": x.data_ptr(), "y": y.data_ptr(), "w": w.data_ptr(), "dy": dy.data_ptr(), "dx": x.grad.data_ptr(),
        "cli": code, "report": json.load(open("report.json")), "markdown": open("report.md").read(),
    }
    print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """What the script above found, compiling for sm_90 in a fresh interpreter without TRITON_INTERPRET (from a
    file: triton.jit reads the kernels' source)."""
    where = tmp_path_factory.mktemp("kernel_report")
    script = where / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset; 1 is its (and 3.6's) default
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=where
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fake_driver_runs_the_jit_path_and_records_each_launch(compiled):
    out = compiled["driver"]
    assert out["grids"] == [[4, 1, 1], [5, 1, 1], [4, 1, 1]]
    assert out["warps"] == [4, 2, 4] and out["names"] == ["scale_kernel"] * 3
    # The launcher gets every argument in parameter order, constexprs included, tensors as passed.
    assert out["args_first"] == [out["x_ptr"], out["y_ptr"], 4096, 2.0, 1024]
    assert out["named_second"] == {"n": 4095, "scale": 2.0, "BLOCK": 1024} and out["second_x_is_view"]
    # Specialized as on a GPU: the aligned launch and the misaligned one compile apart, a new float does not.
    assert out["same_kernel"] and out["distinct_kernel"] and out["kernels_cached"] == 2
    assert "tt.divisibility" in out["attrs_first"] and out["attrs_first"] != out["attrs_second"]
    assert out["cubin_is_kernels"] and 0 < out["n_regs"] <= 255
    assert "arch=90" in out["target"]
    assert out["logged"] == 3 and out["log_after_unrecorded"] == 0


def test_fake_driver_refuses_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from tokennorm.tools.kernel_report import fakecuda

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fakecuda.install()
    assert not fakecuda.is_installed()


def test_analysis_of_small_kernels_compiled_for_sm90(compiled):
    out = compiled["analysis"]
    copy, unaligned, rms, chunks = out["copy"], out["copy_unaligned"], out["rms"], out["chunks"]
    # 1024 bf16 over 128 threads: one 16-byte load and store each; nothing else of note
    assert copy["loads"] == {"X": 16} and copy["stores"] == {"Y": 16} and copy["ldg"] == {"16": 1}
    assert copy["spill"] == 0 and copy["spill_ins"] == 0 and copy["bar"] == 0 and copy["shfl"] == 0
    assert copy["math"] == {} and copy["cp"] == 0 and copy["hot"] == 0 and copy["cold"] == 0 and copy["sub"] == 0
    assert copy["per_elem"] == pytest.approx(copy["main"] * 128 / 1024)
    assert 8 < copy["main"] < 40 and copy["regs"] < 32 and copy["shared"] == 0
    assert copy["programs"] == 16 and copy["limit"] == "warps"  # 64 warps per SM / 4
    # Unaligned pointers: Triton cannot vectorize, each thread moves 2-byte elements.
    assert unaligned["loads"] == {"X": 2} and unaligned["stores"] == {"Y": 2}
    # A block reduction: shuffles within warps, a barrier between them; div.rn/sqrt.rn with their slow paths
    # in subroutines, and the blocks calling them cold.
    assert rms["shfl"] >= 5 and rms["bar"] >= 1 and rms["loads"] == {"X": 16}
    assert rms["math"] == {"div.full.f32": 1, "div.rn.f32": 1, "sqrt.rn.f32": 1}  # Σx² / n: Triton's fast `/`
    assert rms["sub"] > 0 and rms["cold"] > 0
    # A chunk loop: the loop body is the hot code, counted per chunk of 1024; the rest once per 64K row.
    assert 0 < chunks["hot"] < chunks["main"] and chunks["loads"] == {"X": 16}
    assert chunks["per_elem"] == pytest.approx(
        chunks["hot"] * 128 / 1024 + (chunks["main"] - chunks["hot"]) * 128 / 65536
    )


# --------------------------------------------------------------------------- parsing, directly, no compile

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
        /*0010*/              @!P0 LDG.E.128 R8, desc[UR4][R4.64] ;         /* 0x0000000404088981 */
        /*0020*/                   FCHK P1, R41, R35 ;                      /* 0x0 */
        /*0030*/              @!P1 BRA 0x70 ;                               /* 0x0 */
        /*0040*/                   MOV R38, R35 ;                           /* 0x0 */
        /*0050*/                   CALL.REL.NOINC 0x100 ;                   /* 0x0 */
        /*0060*/                   MOV R36, R0 ;                            /* 0x0 */
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;            /* 0x0 */
        /*0080*/                   SHFL.BFLY PT, R17, R0, 0x10, 0x1f ;      /* 0x0 */
        /*0090*/               @P2 BRA 0x10 ;                               /* 0x0 */
        /*00a0*/                   STG.E.128 desc[UR4][R2.64], R8 ;         /* 0x0 */
        /*00b0*/                   EXIT ;                                   /* 0x0 */
        /*00c0*/                   BRA 0xc0;                                /* 0x0 */
        /*00d0*/                   NOP;                                     /* 0x0 */
        /*0100*/                   FFMA R0, R1, R2, R3 ;                    /* 0x0 */
        /*0110*/                   RET.REL.NODEC R16 0x0 ;                  /* 0x0 */
"""


def test_sass_structure_splits_main_code_cold_blocks_subroutines_and_loops():
    s = analysis.sass_structure(SASS)
    assert [i.address for i in s.cold] == [0x40, 0x50, 0x60]  # the call's setup, skipped unless P1
    assert [i.opcode for i in s.subroutines] == ["FFMA", "RET.REL.NODEC"]
    # main: no NOP, no padding 'BRA self', no cold block
    assert [i.address for i in s.main] == [0x0, 0x10, 0x20, 0x30, 0x70, 0x80, 0x90, 0xA0, 0xB0]
    assert s.loops == [analysis.Loop(0x10, 0x90)] and s.hot_loops == s.loops and s.row_loop is None
    assert s.hot == 6 and s.row == 6 and s.opcodes("BAR.SYNC") == 1 and s.opcodes("SHFL") == 1
    assert s.widths("LDG") == {16: 1} and s.widths("STG") == {16: 1}
    tiling = analysis.Tiling(per_iteration=256, per_row=256, per_program=4096)
    # 6 loop instructions per 256 elements, 3 more once per 4096, for 4 warps (128 threads)
    assert analysis.sass_per_element(s, 4, tiling) == pytest.approx(6 * 128 / 256 + 3 * 128 / 4096)


PTX = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u64 .ptr .global .align 1 k_param_1,
	.param .u32 k_param_2
)
{
	ld.param.b64 	%rd9, [k_param_0];
	ld.param.b64 	%rd10, [k_param_1];
	ld.param.b32 	%r30, [k_param_2];
	mul.wide.s32 	%rd15, %r30, %r29;
	add.s64 	%rd18, %rd9, %rd15;
	add.s64 	%rd19, %rd10, %rd15;
	// begin inline asm
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd18 + 0 ];
	// end inline asm
	ld.global.b16 	%rs1, [%rd9+2];
	cp.async.cg.shared.global [ %r5 + 0 ], [ %rd18 + 0 ], 0x10, %r6;
	div.rn.f32 	%r7, %r8, %r9;
	sqrt.approx.ftz.f32 	%r10, %r11;
	@%p1 st.global.v2.b32 [ %rd19 + 0 ], { %r1, %r2 };
	ret;
}
"""


def test_ptx_accesses_are_attributed_to_the_pointer_they_address():
    accesses = analysis.ptx_accesses(PTX, ["X", "Y", ""])
    assert accesses == [
        analysis.Access("X", "cp.async", 16, 1),
        analysis.Access("X", "load", 2, 1),
        analysis.Access("X", "load", 16, 1),
        analysis.Access("Y", "store", 8, 1),
    ]
    assert analysis.ptx_math(PTX) == {"div.rn.f32": 1, "sqrt.approx.ftz.f32": 1}


@pytest.mark.parametrize(
    "regs, warps, shared, programs, limit",
    [
        (24, 4, 0, 16, "warps"),  # 64 warps / 4 (registers would allow 21)
        (48, 8, 4096, 5, "registers"),  # 48·32 = 1536 registers per warp · 8 = 12288; 65536 // 12288
        (227, 8, 8192, 1, "registers"),  # 232 per thread after rounding: one 8-warp program
        (64, 2, 100 * 1024, 2, "shared"),  # (100 + 1) KB of 228
        (16, 1, 0, 32, "blocks"),
    ],
)
def test_occupancy_follows_hopper_limits(regs, warps, shared, programs, limit):
    occ = hopper.occupancy(regs, warps, shared)
    assert (occ.programs, occ.limited_by) == (programs, limit)


def test_issue_budget_is_the_sms_issue_rate_over_the_copy_rate():
    # bf16 LayerNorm forward (4 bytes per element) on an H100: 132·4·32·1.98e9 / (3.0e12 / 4) ≈ 44.6
    assert hopper.H100.issue_budget(4) == pytest.approx(132 * 4 * 32 * 1.98e9 / (3.0e12 / 4))
    assert hopper.H200.issue_budget(4) < hopper.H100.issue_budget(4)  # more bytes per second, same SMs


# ------------------------------------------------------------------------------------------- host time


def test_host_time_is_the_median_per_call_in_a_quiet_process():
    threads, seen = torch.get_num_threads(), []

    def busy_200us():
        seen.append((torch.get_num_threads(), gc.isenabled()))
        end = time.perf_counter() + 200e-6
        while time.perf_counter() < end:
            pass

    t = host_time.measure(busy_200us, repeats=5, warmup=1, min_batch_s=0.002)
    assert 200 <= t.p20_us <= t.median_us <= t.p80_us < 20_000  # at least the busy wait; loose above
    assert t.repeats == 5 and t.calls_per_repeat * t.median_us >= 0.8 * 2000  # batches as long as asked
    assert set(seen) == {(1, False)}  # one torch thread, no garbage collection while timing...
    assert torch.get_num_threads() == threads and gc.isenabled()  # ...and both restored
    with pytest.raises(ValueError, match="repeats"):
        host_time.measure(busy_200us, repeats=0)


# ----------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--n", "3X"], "invalid row length"),
        (["--ops", "ln,nope"], "invalid op nope"),
        (["--directions", "sideways"], "invalid direction"),
        (["--dtype", "fp8"], "invalid choice"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_bad_flags_give_one_line_and_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_to_run_under_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cli.main(["--n", "1K"]) == 2
    err = capsys.readouterr().err
    assert "TRITON_INTERPRET" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- the public API's real launches, end to end


def test_public_layer_norm_launches_are_captured_and_reported(compiled):
    out = compiled["public"]
    assert len(out["forward"]) >= 1 and len(out["backward"]) >= 1
    assert any({out["x"], out["y"], out["w"]} <= set(p) for p in out["forward"])  # the real tensors, as passed
    # dy as passed; dx is the kernel's own output, which autograd copies into x.grad here (it moves a gradient
    # into .grad only when nothing else holds it, and the capture holds the launch's arguments)
    assert any(out["dy"] in p for p in out["backward"])
    assert out["cli"] == 0
    rows = out["report"]["rows"]
    assert {(r["direction"], r["n"]) for r in rows} == {("fwd", 1024), ("fwd", 4096), ("bwd", 1024), ("bwd", 4096)}
    for r in rows:
        assert r["impl"] == "tokennorm" and r["registers"] > 0 and r["sass_per_element"] > 0
        assert 0 < r["issue_share"]["H100 SXM5 80GB HBM3"] < r["issue_share"]["H200 SXM 141GB HBM3e"]
        assert r["occupancy"]["programs"] >= 1 and r["m"] * r["n"] == out["report"]["meta"]["elements_per_case"]
    assert out["markdown"].count("| tokennorm | ln |") == len(rows)


# ----------------------------------------------------------------------- on a GPU: the fake driver is faithful

FAKE_LAUNCHES = """
    import json
    import torch
    import tokennorm
    from tokennorm.tools.kernel_report import cases, cubin, fakecuda

    fakecuda.install()
    found = []
    with cases.tokennorm_on_fake_gpu(fakecuda.installed_device()), fakecuda.capture() as launches:
        for n in NS:
            x = torch.empty(M, n, dtype=torch.bfloat16, requires_grad=True)
            w = torch.empty(n, dtype=torch.bfloat16, requires_grad=True)
            b = torch.empty(n, dtype=torch.bfloat16, requires_grad=True)
            tokennorm.layer_norm(x, (n,), w, b).backward(torch.empty(M, n, dtype=torch.bfloat16))
    for launch in launches:
        used = cubin.resources(launch.cubin)
        found.append([launch.name, launch.kernel.hash, used.registers])
    print(json.dumps(found))
"""


@pytest.mark.skipif(
    not torch.cuda.is_available()
    or "H100" not in torch.cuda.get_device_name()
    and "H200" not in torch.cuda.get_device_name(),
    reason="needs an H100 or H200 (132 SMs, sm_90)",
)
def test_fake_driver_compiles_the_kernels_a_hopper_gpu_launches(tmp_path):
    """The same public calls on the GPU and, in a subprocess, on CPU tensors under the fake driver: the fake
    driver's launches are the GPU's (the same compiled kernel hash: specialization, config and options), and
    cuobjdump reads the registers the CUDA driver reports."""
    import tokennorm

    m, ns = 4096, (1024, 4096, 16384)
    real = {}
    for n in ns:
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        tokennorm.layer_norm(x, (n,), w, b).backward(torch.randn_like(x))
    torch.cuda.synchronize()
    for module in [mod for name, mod in list(sys.modules.items()) if name.startswith("tokennorm.kernels")]:
        for fn in vars(module).values():
            for caches in getattr(fn, "device_caches", {}).values():
                for compiled in caches[0].values():
                    real[compiled.hash] = compiled.n_regs

    script = tmp_path / "fake.py"
    script.write_text(f"M, NS = {m}, {ns}\n" + textwrap.dedent(FAKE_LAUNCHES))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fake = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(fake) >= 2 * len(ns)  # a forward and at least one backward launch per N
    for name, kernel_hash, registers in fake:
        assert kernel_hash in real, f"{name}: the fake driver compiled a kernel the GPU did not launch"
        assert registers == real[kernel_hash], name
