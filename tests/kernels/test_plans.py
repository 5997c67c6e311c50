"""Launch plans: decided once per distinct call, fetched with one cached lookup, and every compile-time switch
a kernel declares passed to it by name."""

from __future__ import annotations

import inspect
import struct

import pytest
import torch
import triton.language as tl
from conftest import KERNEL_DEVICE

from tokennorm.kernels import config as kconfig
from tokennorm.kernels import launch, plan
from tokennorm.kernels.chunked import chunked_forward_kernel
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, ROWS, SEGMENT, KernelConfig
from tokennorm.kernels.long_rows import long_rows_backward_kernel, long_rows_forward_kernel
from tokennorm.kernels.rows import rows_backward_kernel, rows_forward_kernel
from tokennorm.kernels.segment import segment_backward_kernel

DEVICE = torch.device(KERNEL_DEVICE)


def _forward_plan(n=64, eps=1e-5, weight_offset=0.0, config=None, x_dtype=torch.float32):
    return plan.forward_plan(n, x_dtype, True, True, None, None, eps, 0.0, weight_offset, False, True, DEVICE, config)


def test_the_same_call_fetches_the_same_plan():
    assert _forward_plan() is _forward_plan()
    assert _forward_plan(eps=1e-6) is not _forward_plan()
    assert _forward_plan(weight_offset=1.0).constexprs["WEIGHT_OFFSET"] == 1.0  # a compile-time constant


@pytest.mark.interpret
def test_repeated_calls_add_no_plans():
    x = torch.randn(4, 48, device=DEVICE)
    w = torch.ones(48, device=DEVICE)
    launch.norm_forward(x, w, None, None, None, 1e-5, 0.0, 0.0, True, None)
    before = plan.forward_plan.cache_info().currsize
    for _ in range(20):
        launch.norm_forward(x, w, None, None, None, 1e-5, 0.0, 0.0, True, None)
    assert plan.forward_plan.cache_info().currsize == before
    assert plan.forward_plan.cache_info().maxsize == plan.PLAN_CACHE_SIZE  # bounded whatever the calls


def test_float64_plans_carry_eps_remainder():
    p = _forward_plan(eps=1e-5, x_dtype=torch.float64)
    assert p.acc_dtype == torch.float64
    as_float32 = struct.unpack("f", struct.pack("f", 1e-5))[0]
    assert p.eps_lo == 1e-5 - as_float32 and p.eps_lo != 0.0


def _constexpr_names(kernel) -> set[str]:
    """The parameters a kernel declares ``tl.constexpr`` (from its source: the interpreter wraps it too)."""
    params = inspect.signature(kernel.fn).parameters.values()
    return {p.name for p in params if p.annotation in (tl.constexpr, "tl.constexpr")}


LAUNCH_OPTIONS = {"num_warps", "maxnreg"}
# Switches a launcher adds besides the plan's: the long-row exchange and the segment kernels' pass.
PER_LAUNCH = {
    long_rows_forward_kernel: {"EXCHANGE"},
    long_rows_backward_kernel: {"EXCHANGE"},
    segment_backward_kernel: {"PASS"},
}


@pytest.mark.parametrize(
    "config,kernel",
    [
        (KernelConfig(ROWS, 64, 1, max_registers=40), rows_forward_kernel),
        (KernelConfig(CHUNKED, 16, 1), chunked_forward_kernel),
        (KernelConfig(LONG_ROWS, 16, 1), long_rows_forward_kernel),
    ],
    ids=["rows", "chunked", "long_rows"],
)
def test_forward_plans_name_every_switch_of_their_kernel(config, kernel):
    switches = set(_forward_plan(config=config).constexprs) - LAUNCH_OPTIONS
    assert switches | PER_LAUNCH.get(kernel, set()) == _constexpr_names(kernel)


@pytest.mark.parametrize(
    "config,kernel",
    [
        (KernelConfig(ROWS, 64, 1), rows_backward_kernel),
        (KernelConfig(LONG_ROWS, 16, 1), long_rows_backward_kernel),
        (KernelConfig(SEGMENT, 16, 1), segment_backward_kernel),
    ],
    ids=["rows", "long_rows", "segment"],
)
def test_backward_plans_name_every_switch_of_their_kernel(config, kernel):
    p = plan.backward_plan(
        64, torch.float32, torch.float32, None, True, False, 0.0, 0.0, False, True, True, DEVICE, config
    )
    assert (set(p.constexprs) - LAUNCH_OPTIONS) | PER_LAUNCH.get(kernel, set()) == _constexpr_names(kernel)


def test_a_register_cap_is_a_launch_option():
    p = _forward_plan(config=KernelConfig(ROWS, 64, 1, max_registers=40))
    assert p.constexprs["maxnreg"] == 40 and p.constexprs["num_warps"] == 1
    assert "maxnreg" not in _forward_plan(config=KernelConfig(ROWS, 64, 1)).constexprs


def test_configs_follow_the_device_s_l2_and_sm_count():
    h100 = kconfig.DeviceFacts(132, 50 << 20)
    assert kconfig.forward_config(65536, 2, 4, h100).mode == CHUNKED  # 132 rows of 128 KB fit half the L2
    assert kconfig.forward_config(65536, 4, 4, h100).mode == LONG_ROWS  # float32 rows: they do not
    assert kconfig.forward_config(65536, 2, 4, kconfig.DeviceFacts(132, 20 << 20)).mode == LONG_ROWS


def test_l2_size_from_the_device_else_from_the_table(monkeypatch):
    import types

    kconfig.device_facts.cache_clear()
    try:
        props = types.SimpleNamespace(name="NVIDIA H200", multi_processor_count=132, L2_cache_size=0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
        assert kconfig.device_facts(torch.device("cuda", 0)) == (132, 60 << 20)
        props.L2_cache_size = 52428800
        kconfig.device_facts.cache_clear()
        assert kconfig.device_facts(torch.device("cuda", 0)) == (132, 52428800)
    finally:
        kconfig.device_facts.cache_clear()


def test_a_plan_holds_its_mode_s_kernel_with_its_switches_bound():
    for config in (KernelConfig(ROWS, 64, 1), KernelConfig(CHUNKED, 16, 1), KernelConfig(LONG_ROWS, 16, 1)):
        p = _forward_plan(config=config)
        assert p.kernel.launcher is plan.FORWARD_KERNELS[config.mode] and p.kernel.kwargs == p.constexprs
    p = plan.backward_plan(
        64,
        torch.float32,
        torch.float32,
        None,
        True,
        False,
        0.0,
        0.0,
        False,
        True,
        True,
        DEVICE,
        KernelConfig(SEGMENT, 16, 1),
    )
    assert p.kernel.launcher is plan.BACKWARD_KERNELS[SEGMENT] and p.kernel.kwargs == p.constexprs
