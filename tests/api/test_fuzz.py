"""Hypothesis fuzzing of shapes, dtypes, parameters, strides and value ranges: tokennorm vs torch, forward and
gradients, by the same 2×-torch's-error rule as test_norm_parity.py."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_norm_parity import DTYPES, LN, MIXED_DTYPE_WARNING, RMS, assert_matches_torch, make_params

# Function-scoped fixtures (the backend) are set once per test, not per example: fine, the examples do not
# change the environment.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@st.composite
def norm_cases(draw, max_rows, max_n):
    """(op, base tensor, view, normalized_shape, weight, bias, eps) for one call."""
    op = draw(st.sampled_from([LN, RMS]))
    dtype = draw(st.sampled_from(DTYPES))
    ns = tuple(draw(st.lists(st.integers(1, max_n), min_size=1, max_size=2)))
    if math.prod(ns) > max_n:
        ns = ns[-1:]
    lead = tuple(draw(st.lists(st.integers(0, max_rows), min_size=0, max_size=2)))
    if math.prod(lead) > max_rows:
        lead = lead[-1:]
    shape = lead + ns
    # Values: randn scaled over 4 decades and shifted by up to 10 standard deviations (cancellation in the mean).
    scale = 10.0 ** draw(st.integers(-2, 2))
    shift = scale * draw(st.floats(-10, 10))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    transposed = len(shape) >= 2 and len(ns) == 1 and draw(st.booleans())
    base_shape = shape[:-2] + (shape[-1], shape[-2]) if transposed else shape
    base = (torch.randn(base_shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    affine = draw(st.booleans())
    with_bias = op.has_bias and draw(st.booleans())
    # Autocast style: float32 parameters with a bf16/fp16 input.
    param_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) and draw(st.booleans()) else dtype
    weight, bias = make_params(ns, param_dtype, affine, with_bias, seed=draw(st.integers(0, 1000)))
    eps = draw(st.sampled_from([1e-5, 1e-6] + ([None] if not op.has_bias else [])))
    view = (lambda t: t.transpose(-1, -2)) if transposed else (lambda t: t)
    return op, base, view, ns, weight, bias, eps


def _check(case, device):
    op, base, view, ns, weight, bias, eps = case
    weight, bias = (None if p is None else p.to(device) for p in (weight, bias))
    assert_matches_torch(op, base.to(device), ns, weight, bias, eps=eps, view=view)


@pytest.mark.filterwarnings(MIXED_DTYPE_WARNING)
@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=norm_cases(max_rows=40, max_n=300))
def test_fuzz_torch_backend(torch_backend, case):
    _check(case, "cpu")


@pytest.mark.interpret
@pytest.mark.filterwarnings(MIXED_DTYPE_WARNING)
@settings(max_examples=10, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=norm_cases(max_rows=8, max_n=48))
def test_fuzz_triton_backend(triton_backend, case):
    _check(case, triton_backend)


def test_strategy_covers_the_edge_cases():
    """The strategy really produces what we claim (empty, transposed, autocast-style, multi-dim); drawn with
    a fixed random source so this check itself is deterministic."""
    seen = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(case=norm_cases(max_rows=8, max_n=48))
    def collect(case):
        op, base, view, ns, weight, bias, eps = case
        x = view(base)
        seen.add("empty" if x.numel() == 0 else "non-empty")
        seen.add("transposed" if not x.is_contiguous() else "contiguous")
        seen.add("mixed" if weight is not None and weight.dtype != x.dtype else "same-dtype")
        seen.add(f"{len(ns)}-d normalized_shape")

    collect()
    assert seen >= {"empty", "non-empty", "transposed", "contiguous", "mixed", "1-d normalized_shape",
                    "2-d normalized_shape"}
