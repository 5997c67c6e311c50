"""Checks that need real Triton launchers without a GPU: run as ``python fake_gpu.py CHECK`` in a process without
TRITON_INTERPRET (tests/kernels/test_launcher.py and tests/ops/test_no_growth.py start it).

The project's fake CUDA driver (tokennorm.tools.kernel_report.fakecuda) makes Triton compile for sm_90 and run
everything up to ``cuLaunchKernel`` on CPU tensors; a recorder placed around its launchers keeps the last
launcher calls. Exit status 0 and one JSON line on stdout when the check passes; a traceback otherwise.
"""

from __future__ import annotations

import collections
import json
import sys
import warnings

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from tokennorm.tools.kernel_report import fakecuda

fakecuda.install()

# The last launcher calls: (the launcher, its arguments). Launchers are made per compiled kernel, after this runs.
CALLS: collections.deque[tuple[object, tuple]] = collections.deque(maxlen=8)
_make_launcher = driver.active.launcher_cls


def _recording_launcher_cls(src, metadata):
    launcher = _make_launcher(src, metadata)

    def launch(*call):
        CALLS.append((launch, call))
        return launcher(*call)

    return launch


driver.active.launcher_cls = _recording_launcher_cls

# torch.library.wrap_triton registers each kernel once, when the launchers are made (at import).
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402

import tokennorm  # noqa: E402
from tokennorm import backend  # noqa: E402
from tokennorm.kernels import launch, launcher, plan  # noqa: E402
from tokennorm.kernels.launcher import CachedLauncher  # noqa: E402

SIDE_TABLE_AT_IMPORT = len(kernel_side_table.id_to_kernel)


@triton.jit
def probe_kernel(X, Y, W, n, stride, scale, flag, count, BLOCK: tl.constexpr, MODE: tl.constexpr = 0):
    """Arguments of every kind Triton specializes on; the body is only there to be compiled."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs * stride, mask=mask, other=0.0).to(tl.float32) * scale
    if W is not None:
        x += tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    if MODE == 1:
        x = tl.where(flag, x, -x) + count
    tl.store(Y + offs, x.to(Y.dtype.element_ty), mask=mask)


probe_kernel_no_value = triton.jit(probe_kernel.fn, do_not_specialize=["n", "count"])


def _same_call(cached: tuple, jit: tuple, took_cache: bool) -> None:
    """The cached launch hands the launcher what JITFunction.run hands it: grid, stream, compiled function,
    packed metadata and every kernel argument (the same objects); launch metadata and hooks are None on the
    cached path, which runs only while Triton's hook chains are empty (then the C launcher calls nothing)."""
    assert len(cached) == len(jit), (len(cached), len(jit))
    assert cached[:4] == jit[:4], (cached[:4], jit[:4])  # grid x, y, z, stream
    assert cached[4] is jit[4] and cached[5] is jit[5], "another compiled function or metadata"
    if took_cache:
        assert cached[6:9] == (None, None, None), cached[6:9]
        assert not jit[7].calls and not jit[8].calls, "a launch hook is active"
    else:
        assert cached[7] is jit[7] and cached[8] is jit[8]
    for i, (a, b) in enumerate(zip(cached[9:], jit[9:])):
        assert type(a) is type(b) and (a is b or a == b), f"kernel argument {i}: {a!r} vs {b!r}"


def _probe_cases():
    x32, y32, w32 = torch.randn(300), torch.empty(300), torch.randn(300)
    x16, y16 = torch.randn(300).half(), torch.empty(300).half()
    grid = (3,)
    base = dict(args=(x32, y32, w32, 256, 1, 0.5, True, 5), kwargs=dict(BLOCK=128), grid=grid)
    cases = {
        "fp32, aligned, n % 16 == 0": base,
        "n not a multiple of 16": dict(base, args=(x32, y32, w32, 255, 1, 0.5, True, 5)),
        "n == 1": dict(base, args=(x32, y32, w32, 1, 1, 0.5, True, 5)),
        "stride 2 (not 1)": dict(base, args=(x32, y32, w32, 128, 2, 0.5, True, 5)),
        "x not 16-byte aligned": dict(base, args=(x32[1:], y32, w32, 256, 1, 0.5, True, 5)),
        "y not 16-byte aligned": dict(base, args=(x32, y32[3:], w32, 256, 1, 0.5, True, 5)),
        "w None": dict(base, args=(x32, y32, None, 256, 1, 0.5, True, 5)),
        "x and y fp16": dict(base, args=(x16, y16, w32, 256, 1, 0.5, True, 5)),
        "flag False (same kernel)": dict(base, args=(x32, y32, w32, 256, 1, 0.5, False, 5)),
        "count 1": dict(base, args=(x32, y32, w32, 256, 1, 0.5, True, 1)),
        "count -16": dict(base, args=(x32, y32, w32, 256, 1, 0.5, True, -16)),
        "count int64": dict(base, args=(x32, y32, w32, 256, 1, 0.5, True, 2**31)),
        "count uint64": dict(base, args=(x32, y32, w32, 256, 1, 0.5, True, 2**63)),
        "scale 1.0 (a float, not an int)": dict(base, args=(x32, y32, w32, 256, 1, 1.0, True, 5)),
        "BLOCK 64": dict(base, kwargs=dict(BLOCK=64)),
        "MODE 1 by name": dict(base, kwargs=dict(BLOCK=128, MODE=1)),
        "MODE 1 by name, first": dict(base, kwargs=dict(MODE=1, BLOCK=128)),
        "BLOCK and MODE by position": dict(base, args=(*base["args"], 128, 1), kwargs={}),
        "num_warps 2": dict(base, kwargs=dict(BLOCK=128, num_warps=2)),
        "num_stages 2": dict(base, kwargs=dict(BLOCK=128, num_stages=2)),
        "grid of 2": dict(base, grid=(3, 2)),
        "grid of 3": dict(base, grid=(3, 2, 2)),
        "grid from a function": dict(base, grid=lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)),
        "a runtime argument by name": dict(base, args=base["args"][:7], kwargs=dict(count=5, BLOCK=128)),
    }
    return cases


def check_launcher_arguments() -> dict:
    """CachedLauncher vs the jit function it wraps, on a spread of specializations: the same launcher, the same
    launcher arguments, the same compiled kernel returned; from the second call on, from the cache. Likewise
    through CachedLauncher.bind, with the keywords bound, and with the last three runtime arguments bound too."""
    results = {}
    for jit_function in (probe_kernel, probe_kernel_no_value):
        cached_launcher = CachedLauncher(jit_function)
        suffix_launcher = CachedLauncher(jit_function)  # its own cache: bound suffixes add keyword sets
        assert cached_launcher._cached, "the cached path is off with this Triton"
        cases = _probe_cases()
        for round_ in range(2):
            for name, case in cases.items():
                got = cached_launcher[case["grid"]](*case["args"], **case["kwargs"])
                launcher_c, call_c = CALLS[-1]
                expected = jit_function[case["grid"]](*case["args"], **case["kwargs"])
                launcher_j, call_j = CALLS[-1]
                assert got is expected, f"{name}: another compiled kernel"
                assert launcher_c is launcher_j, f"{name}: another launcher"
                # Round 0 takes the cache only where an earlier case has the same specialization; round 1
                # always, but for the call that passes a runtime argument by name (JITFunction.run each time).
                took_cache = call_c[6] is None
                if round_ == 1:
                    assert took_cache == (name != "a runtime argument by name"), f"{name}: cache {took_cache}"
                try:
                    _same_call(call_c, call_j, took_cache)
                except AssertionError as exc:
                    raise AssertionError(f"{name}: {exc}") from None
                # The same launch with the keywords bound once (a launch plan's way): the same again.
                got = cached_launcher.bind(**case["kwargs"])[case["grid"]](*case["args"])
                launcher_b, call_b = CALLS[-1]
                assert got is expected and launcher_b is launcher_j, f"{name}, bound: another compiled kernel"
                try:
                    _same_call(call_b, call_j, call_b[6] is None)
                except AssertionError as exc:
                    raise AssertionError(f"{name}, bound: {exc}") from None
                assert (call_b[6] is None) == (name != "a runtime argument by name"), f"{name}, bound: not cached"
                if len(case["args"]) == 8:  # every runtime argument by position: bind the last three too
                    args = case["args"]
                    got = suffix_launcher.bind(*args[5:], **case["kwargs"])[case["grid"]](*args[:5])
                    launcher_s, call_s = CALLS[-1]
                    assert got is expected and launcher_s is launcher_j, f"{name}, suffix bound: another kernel"
                    try:
                        _same_call(call_s, call_j, call_s[6] is None)
                    except AssertionError as exc:
                        raise AssertionError(f"{name}, suffix bound: {exc}") from None
                    assert round_ == 0 or call_s[6] is None, f"{name}, suffix bound: not cached"
        results[jit_function.fn.__name__ + ("" if jit_function is probe_kernel else " (do_not_specialize)")] = {
            "cases": len(cases),
            "cached_specializations": cached_launcher.cache_size(),
            "compiled_kernels": len(jit_function.device_caches[0][0]),
        }
    return results


class _Shadow:
    """Put in place of ``CachedLauncher.run`` (every launch passes there, bound or not): each launch goes through
    the cached path, then again through the jit function with the same arguments, and the two launcher calls are
    compared. Counts per kernel: launches compared, and how many of them came from the cache."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.original = CachedLauncher.run

    def run(self, cached_launcher: CachedLauncher, grid, args, kwargs, keyword_set, suffix=()):
        got = self.original(cached_launcher, grid, args, kwargs, keyword_set, suffix)
        launcher_c, call_c = CALLS[-1]
        expected = cached_launcher.kernel[grid](*args, *suffix, **kwargs)
        launcher_j, call_j = CALLS[-1]
        assert got is expected and launcher_c is launcher_j, "another compiled kernel"
        _same_call(call_c, call_j, call_c[6] is None)
        counts = self.counts.setdefault(
            cached_launcher.kernel.fn.__name__, {"launches compared": 0, "from the cache": 0}
        )
        counts["launches compared"] += 1
        counts["from the cache"] += call_c[6] is None
        return got


def _public_calls(n: int = 64):
    """Every public op, forward and backward, on a few shapes and dtypes (CPU tensors, Triton path)."""

    def leaf(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype).requires_grad_()

    x, r, w, b = leaf(3, n), leaf(3, n), leaf(n), leaf(n)
    xb = leaf(2, 5, n, dtype=torch.bfloat16)
    modules = [
        tokennorm.LayerNorm(n),
        tokennorm.RMSNorm(n, eps=1e-6),
        tokennorm.AddNorm(n, norm="rmsnorm", placement="pre", residual_dtype=torch.float32),
    ]
    # issue 18's ops: AdaLN-Zero with per-sample modulations, Add & DyT, channels-first LayerNorm
    x3, shift, scale, gate, alpha = leaf(2, 3, n), leaf(2, n), leaf(2, n), leaf(2, n), leaf(1)
    image = leaf(2, n, 4, 4)
    issue18 = [
        (
            "ada_norm pre",
            lambda: sum(t.sum() for t in tokennorm.ada_norm(x3, shift, scale, gate=gate, residual=x3, prenorm=True)),
        ),
        ("add_dyt pre", lambda: sum(t.sum() for t in tokennorm.add_dyt(x, r, alpha, w, b, prenorm=True))),
        ("dyt, inference", lambda: tokennorm.dyt(x.detach(), 0.5, w.detach(), b.detach())),
        ("channels_first_layer_norm", lambda: tokennorm.channels_first_layer_norm(image, w, b)),
    ]
    return issue18 + [
        ("layer_norm", lambda: tokennorm.layer_norm(x, (n,), w, b)),
        ("layer_norm, inference", lambda: tokennorm.layer_norm(x.detach(), (n,), w.detach(), b.detach())),
        ("layer_norm bf16", lambda: tokennorm.layer_norm(xb, (n,))),
        ("rms_norm", lambda: tokennorm.rms_norm(x, (n,), w)),
        ("rms_norm, inference", lambda: tokennorm.rms_norm(x.detach(), (n,))),
        ("add_norm", lambda: tokennorm.add_norm(x, r, w, b)),
        (
            "add_norm pre, dropout",
            lambda: sum(tokennorm.add_norm(x, r, w, norm="rmsnorm", prenorm=True, dropout_p=0.1)),
        ),
        ("LayerNorm", lambda: modules[0](x)),
        ("RMSNorm", lambda: modules[1](xb)),
        ("AddNorm pre", lambda: sum(t.float().sum() for t in modules[2](xb, None))),
    ]


def _run(calls) -> None:
    for _, call in calls:
        out = call()
        if out.requires_grad:
            out.float().sum().backward()


def _use_kernels_on_cpu() -> None:
    backend._kernels_run_on_cpu = True  # CPU tensors take the Triton path (they reach the fake driver)
    tokennorm.set_backend("triton")


def _launchers() -> dict[str, CachedLauncher]:
    """Every cached launcher tokennorm launches through (the plans' kernels, launch.py's own), by kernel name."""
    found = [
        *plan.FORWARD_KERNELS.values(),
        *plan.BACKWARD_KERNELS.values(),
        *(value for value in vars(launch).values() if isinstance(value, CachedLauncher)),
    ]
    return {cached_launcher.kernel.fn.__name__: cached_launcher for cached_launcher in found}


def check_public_ops() -> dict:
    """The launches of every public op (forward and backward) compared with Triton's own, call by call."""
    _use_kernels_on_cpu()
    shadow = _Shadow()
    CachedLauncher.run = lambda cached_launcher, *call: shadow.run(cached_launcher, *call)
    calls = _public_calls()
    for _ in range(2):
        _run(calls)
    assert shadow.counts, "no launch went through a CachedLauncher"
    for name, counts in shadow.counts.items():
        assert counts["from the cache"] >= counts["launches compared"] // 2, (name, counts)
    return shadow.counts


def _cache_sizes() -> dict:
    sizes = {
        "torch kernel_side_table kernels": len(kernel_side_table.id_to_kernel),
        "torch kernel_side_table constant args": len(kernel_side_table.constant_args),
    }
    for name, cached_launcher in _launchers().items():
        jit_function = cached_launcher.kernel
        for device, (kernel_cache, key_cache, *_rest) in jit_function.device_caches.items():
            sizes[f"triton {jit_function.fn.__name__} kernels (device {device})"] = len(kernel_cache)
            sizes[f"triton {jit_function.fn.__name__} keys (device {device})"] = len(key_cache)
        sizes[f"tokennorm {name} launches"] = cached_launcher.cache_size()
        sizes[f"tokennorm {name} key functions"] = len(cached_launcher._key_functions)
        sizes[f"tokennorm {name} keyword sets"] = len(cached_launcher._keyword_sets)
    for module_name, module in sorted(sys.modules.items()):  # every functools cache in tokennorm
        if module_name.startswith("tokennorm."):
            for attr, value in vars(module).items():
                if callable(getattr(value, "cache_info", None)) and getattr(value, "__module__", None) == module_name:
                    sizes[f"tokennorm {module_name}.{attr}"] = value.cache_info().currsize
    return sizes


def check_no_growth(rounds: int = 1000) -> dict:
    """``rounds`` eager calls of every public op, forward and backward: after the first round, no cache, table
    or Python allocation grows."""
    _use_kernels_on_cpu()
    with fakecuda.recording(False):  # the driver keeps no record of launches
        return _no_growth(rounds)


def _no_growth(rounds: int) -> dict:
    import gc
    import tracemalloc

    calls = _public_calls()
    _run(calls)
    _run(calls)  # every specialization compiled and cached
    first = _cache_sizes()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(rounds):
        _run(calls)
    gc.collect()
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    last = _cache_sizes()
    assert last == first, {k: (first[k], last[k]) for k in first if first[k] != last[k]}
    assert first["torch kernel_side_table kernels"] == SIDE_TABLE_AT_IMPORT, "an eager call took wrap_triton"
    assert first["torch kernel_side_table constant args"] == 0, "an eager call took wrap_triton"
    # Per-call growth would be rounds × calls × its size: 1.6 KB per call (a side-table entry) is 16 MB here.
    assert grown < 256 * 1024, f"Python allocations grew by {grown} bytes over {rounds} rounds"
    return {"rounds": rounds, "calls per round": len(calls), "python bytes grown": grown, "sizes": last}


def check_compile() -> dict:
    """torch.compile(fullgraph=True) traces the ops through wrap_triton (the launch recorded in the graph), and
    the compiled function runs forward and backward on the fake driver."""
    _use_kernels_on_cpu()
    x = torch.randn(4, 64, requires_grad=True)
    w, b = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    compiled = torch.compile(
        lambda x, w, b: tokennorm.add_norm(x, None, w, b, prenorm=True)[0].sum(), backend="aot_eager", fullgraph=True
    )
    compiled(x, w, b).backward()
    traced = len(kernel_side_table.constant_args)
    assert traced > 0, "the compiled graph did not record the kernel launch"
    assert x.grad is not None and w.grad is not None
    return {"kernels recorded by tracing": traced}


def check_fallback() -> dict:
    """With Triton internals other than expected: one warning, then plain JITFunction calls."""
    launcher._INTERNALS, launcher._MISSING, launcher._warned = None, "(simulated)", False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        launchers = [CachedLauncher(probe_kernel), CachedLauncher(probe_kernel_no_value)]
    messages = [str(w.message) for w in caught if "cached kernel launches are off" in str(w.message)]
    assert len(messages) == 1, messages
    case = _probe_cases()["fp32, aligned, n % 16 == 0"]
    for cached_launcher in launchers:
        for _ in range(2):
            got = cached_launcher[case["grid"]](*case["args"], **case["kwargs"])
            launcher_c, call_c = CALLS[-1]
            expected = cached_launcher.kernel[case["grid"]](*case["args"], **case["kwargs"])
            launcher_j, call_j = CALLS[-1]
            assert got is expected and launcher_c is launcher_j, "another compiled kernel"
            _same_call(call_c, call_j, took_cache=False)
        assert cached_launcher.cache_size() == 0
    return {"warnings": messages}


CHECKS = {
    "launcher-arguments": check_launcher_arguments,
    "public-ops": check_public_ops,
    "no-growth": check_no_growth,
    "compile": check_compile,
    "fallback": check_fallback,
}

if __name__ == "__main__":
    result = CHECKS[sys.argv[1]]()
    print(json.dumps({"triton": triton.__version__, "torch": torch.__version__, **result}, default=str))
