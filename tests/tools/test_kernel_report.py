"""The kernel report: the fake CUDA driver, the analysis of compiled kernels, the CLI.

Kernels compile for sm_90 only outside Triton's interpreter, which this test session turns on (conftest), so
everything that compiles runs in a subprocess without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the fake driver stands in for a missing GPU")
triton = pytest.importorskip("triton")


def run_compiled(code: str, tmp_path, timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter where triton.jit compiles for real (from a file: triton.jit reads
    the kernels' source); it prints one JSON object last."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset; 1 is its (and 3.6's) default
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


COPY_KERNEL = """
    import json
    import torch
    import triton
    import triton.language as tl
    from tokennorm.tools.kernel_report import fakecuda

    fakecuda.install()

    @triton.jit
    def copy_kernel(X, Y, n, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(Y + offs, tl.load(X + offs, mask=mask) * scale, mask=mask)
"""


def test_fake_driver_runs_the_jit_path_and_records_each_launch(tmp_path):
    out = run_compiled(COPY_KERNEL + """
    x = torch.zeros(4097, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    with fakecuda.capture() as launches:
        copy_kernel[(4,)](x, y, 4096, 2.0, BLOCK=1024, num_warps=4)
        copy_kernel[(5,)](x[1:], y, 4095, 2.0, BLOCK=1024, num_warps=2)  # misaligned pointer, odd n
        copy_kernel[(4,)](x, y, 4096, 3.0, BLOCK=1024, num_warps=4)  # same specialization as the first
    first, second, third = launches
    fakecuda.clear()
    with fakecuda.recording(False):
        copy_kernel[(4,)](x, y, 4096, 2.0, BLOCK=1024, num_warps=4)
    print(json.dumps({
        "grids": [l.grid for l in launches],
        "warps": [l.num_warps for l in launches],
        "names": [l.name for l in launches],
        "args_first": [a.data_ptr() if torch.is_tensor(a) else a for a in first.args],
        "x_ptr": x.data_ptr(), "y_ptr": y.data_ptr(),
        "named_second": {k: v for k, v in second.named_args.items() if not torch.is_tensor(v)},
        "second_x_is_view": second.named_args["X"].data_ptr() == x.data_ptr() + 2,
        "same_kernel": first.kernel is third.kernel, "distinct_kernel": first.kernel is not second.kernel,
        "kernels_cached": len(copy_kernel.device_caches[0][0]),
        "cubin_is_kernels": first.cubin == first.kernel.asm["cubin"],
        "sig_first": first.kernel.src.signature, "sig_second": second.kernel.src.signature,
        "attrs_first": repr(first.kernel.src.attrs), "attrs_second": repr(second.kernel.src.attrs),
        "n_regs": first.kernel.n_regs, "log_after_unrecorded": len(fakecuda.launches()),
        "target": repr(first.kernel.metadata.target),
    }))
    """, tmp_path)
    assert out["grids"] == [[4, 1, 1], [5, 1, 1], [4, 1, 1]]
    assert out["warps"] == [4, 2, 4] and out["names"] == ["copy_kernel"] * 3
    # The launcher gets every argument in parameter order, constexprs included, tensors as passed.
    assert out["args_first"] == [out["x_ptr"], out["y_ptr"], 4096, 2.0, 1024]
    assert out["named_second"] == {"n": 4095, "scale": 2.0, "BLOCK": 1024} and out["second_x_is_view"]
    # Specialized as on a GPU: the aligned launch and the misaligned one compile apart, a new float does not.
    assert out["same_kernel"] and out["distinct_kernel"] and out["kernels_cached"] == 2
    assert "tt.divisibility" in out["attrs_first"] and out["attrs_first"] != out["attrs_second"]
    assert out["cubin_is_kernels"] and 0 < out["n_regs"] <= 255
    assert "arch=90" in out["target"]
    assert out["log_after_unrecorded"] == 0


def test_fake_driver_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", "from tokennorm.tools.kernel_report import fakecuda; fakecuda.install()"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "TRITON_INTERPRET" in proc.stderr.splitlines()[-1]


def test_fake_driver_captures_tokennorms_launcher_at_the_default_config(tmp_path):
    out = run_compiled("""
    import json
    import torch
    from tokennorm.kernels import config, launch
    from tokennorm.tools.kernel_report import fakecuda

    fakecuda.install()
    x = torch.empty(64, 4096, dtype=torch.bfloat16)
    w, b = torch.empty(4096, dtype=torch.bfloat16), torch.empty(4096, dtype=torch.bfloat16)
    with fakecuda.capture() as launches:
        out = launch.norm_forward(x, w, b, None, None, 1e-5, 0.0, 0.0, False, None)
    (fwd,) = launches
    cfg = config.forward_config(4096)
    args = fwd.named_args
    print(json.dumps({
        "name": fwd.name, "grid": fwd.grid, "warps": fwd.num_warps, "cfg_warps": cfg.num_warps,
        "block": [args["BLOCK_M"], args["BLOCK_N"]], "cfg_block": [cfg.block_m, cfg.block_n],
        "x": args["X"] is x, "y": args["Y"] is out.y, "n": args["N"], "ptx": ".target sm_90" in fwd.kernel.asm["ptx"],
    }))
    """, tmp_path)
    assert out["name"] == "norm_fwd_kernel" and out["x"] and out["y"] and out["n"] == 4096 and out["ptx"]
    assert out["warps"] == out["cfg_warps"] and out["block"] == out["cfg_block"]
    assert out["grid"] == [64 // out["block"][0], 1, 1]
