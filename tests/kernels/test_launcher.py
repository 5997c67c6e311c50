"""CachedLauncher: the same launches as Triton's own JIT path, for less host time.

The launches themselves need compiled kernels and a CUDA driver: those checks run in a subprocess without the
interpreter, on a fake CUDA driver (tests/kernels/fake_gpu.py), on whatever Triton is installed (CI: 3.9; run
this file with a Triton 3.6 environment for the GPU image's version). The key functions are checked here.
"""

from __future__ import annotations

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from tokennorm.kernels import launch, launcher, plan


@pytest.mark.slow
def test_cached_launches_hand_the_launcher_what_triton_does(fake_gpu):
    """24 calls of a probe kernel (every kind of argument Triton specializes on, grids of 1–3 dims and from a
    function, options), with and without do_not_specialize: same launcher arguments, same compiled kernel."""
    result = fake_gpu("launcher-arguments")
    for kernel, counts in result.items():
        if isinstance(counts, dict):
            assert counts["compiled_kernels"] <= counts["cached_specializations"] <= counts["cases"], kernel


@pytest.mark.slow
def test_every_public_op_launches_as_triton_does(fake_gpu):
    result = fake_gpu("public-ops")
    assert result["rows_forward_kernel"]["from the cache"] > 0 and result["rows_backward_kernel"]["from the cache"] > 0


@pytest.mark.slow
def test_other_triton_internals_fall_back_with_one_warning(fake_gpu):
    assert len(fake_gpu("fallback")["warnings"]) == 1


@pytest.mark.slow
def test_torch_compile_traces_the_launch_through_wrap_triton(fake_gpu):
    """fullgraph=True: no graph break; the kernel launch is in the graph (wrap_triton), forward and backward."""
    assert fake_gpu("compile")["kernels recorded by tracing"] > 0


def test_interpreted_kernels_are_called_as_they_are():
    if torch.cuda.is_available():
        pytest.skip("the kernels are compiled on a GPU machine")
    wrapped = [
        *plan.FORWARD_KERNELS.values(),
        *plan.BACKWARD_KERNELS.values(),
        *(v for v in vars(launch).values() if isinstance(v, launcher.CachedLauncher)),
    ]
    assert wrapped and all(not w._cached and w.cache_size() == 0 for w in wrapped)


def _probe(X, Y, n, scale, BLOCK: tl.constexpr, MODE: tl.constexpr = 0):
    pass


def _probe_no_value(X, Y, n, scale, BLOCK: tl.constexpr):
    pass


@pytest.mark.skipif(not launcher.cached_launch_available(), reason="cached launches are off with this Triton")
def test_key_separates_what_triton_specializes_on():
    """Arguments Triton compiles differently for get different keys; the same specialization, the same key."""
    cached = launcher.CachedLauncher(JITFunction(_probe))
    x, y = torch.randn(64), torch.randn(64)

    functions = {}  # one key function per pattern of argument types, as CachedLauncher keeps them

    def key(*args):
        types = tuple(map(type, args))
        if types not in functions:
            functions[types] = cached._make_key_function(types)
        return functions[types](0, 0, *args)

    same = [(x, y, 32, 0.5), (x[4:], y[8:], 48, 2.0), (x.clone(), y, -16, 1.0)]
    assert len({key(*a) for a in same}) == 1
    different = [
        (x, y, 32, 0.5),
        (x[1:], y, 32, 0.5),  # x not 16-byte aligned
        (x.double(), y, 32, 0.5),  # dtype
        (x, y, 33, 0.5),  # n not a multiple of 16
        (x, y, 1, 0.5),  # n == 1
        (x, y, 2**31, 0.5),  # i64
        (x, y, 2**63, 0.5),  # u64
    ]
    assert len({key(*a) for a in different}) == len(different)
    assert key(x, y, 32, 0.5, 64) != key(x, y, 32, 0.5, 128)  # a constexpr by position: its value
    assert cached._make_key_function((torch.Tensor, torch.Tensor, int, str)) is None  # not describable
    assert cached._make_key_function((type(None),)) is not None  # None: the type says all
    no_value = launcher.CachedLauncher(JITFunction(_probe_no_value, do_not_specialize=["n"]))
    key_nv = no_value._make_key_function((torch.Tensor, torch.Tensor, int, float))
    assert key_nv(0, 0, x, y, 1, 0.5) == key_nv(0, 0, x, y, 32, 0.5) != key_nv(0, 0, x, y, 2**31, 0.5)
    assert key_nv(0, 0, x, y, 1, 0.5) != key_nv(1, 0, x, y, 1, 0.5) != key_nv(0, 1, x, y, 1, 0.5)  # device, keywords


@pytest.mark.skipif(not launcher.cached_launch_available(), reason="cached launches are off with this Triton")
def test_a_bound_suffix_takes_the_last_runtime_arguments_and_keys_what_triton_specializes_on():
    """bind(*suffix): the suffix must be the kernel's last runtime parameters, of plain values; its keyword set
    stands for what Triton specializes on in it, so plans that differ only in ε share one cached launch."""
    cached = launcher.CachedLauncher(JITFunction(_probe))
    bound = cached.bind(32, 0.5, BLOCK=64)
    assert bound.suffix == (32, 0.5) and bound._prefix_length == 2
    with pytest.raises(ValueError, match="last runtime parameters"):
        cached.bind(None, None, 32, 0.5, 7, BLOCK=64)  # one more than X, Y, n, scale
    with pytest.raises(TypeError, match="not Tensor"):
        cached.bind(torch.ones(1), BLOCK=64)
    with pytest.raises(TypeError, match="expected 2 arguments"):
        bound.launch((1,), torch.randn(64))

    def keyword_set(*suffix):
        return cached.bind(*suffix, BLOCK=64)._keyword_set

    assert keyword_set(32, 0.5) == keyword_set(48, 2.0) == keyword_set(-16, 1e-6)
    different = [keyword_set(*s) for s in ((32, 0.5), (33, 0.5), (1, 0.5), (2**31, 0.5), (2**63, 0.5), (32, 1))]
    assert len(set(different)) == len(different)
    assert keyword_set(32, 0.5) != cached.bind(BLOCK=64)._keyword_set != cached.bind(32, 0.5, BLOCK=128)._keyword_set


class _Recorder:
    """Stands for a kernel: records the keywords of each launch."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(kwargs)


def test_the_register_cap_is_left_out_while_torch_compile_traces(monkeypatch):
    """torch's wrap_triton forwards num_warps and num_stages to the kernel, not maxnreg."""
    monkeypatch.setattr(launcher, "_wrap_triton", lambda kernel: kernel)
    kernel = _Recorder()
    bound = launcher.CachedLauncher(kernel).bind(BLOCK=64, num_warps=1, maxnreg=40)
    bound.launch((1,), 1.0)
    assert kernel.launches[-1] == {"BLOCK": 64, "num_warps": 1, "maxnreg": 40}
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    bound.launch((1,), 1.0)
    bound[(1,)](1.0, MODE=2)
    assert kernel.launches[-2:] == [{"BLOCK": 64, "num_warps": 1}, {"BLOCK": 64, "num_warps": 1, "MODE": 2}]
