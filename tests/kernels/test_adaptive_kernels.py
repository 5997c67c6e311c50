"""AdaLN / AdaLN-Zero in the norm kernels (issue 18): the gate and the shift/scale modulation as switches of the
rows, chunked, long-row and segment kernels, against the float64 reference — forward (y, h) and every gradient
(dx, dresidual, dshift, dscale, dgate, dγ, dβ) — at the launch level, in each mode, with per-sample ([B, C]) and
per-token modulations, and bit for bit deterministic.

Under Triton's interpreter (no GPU) shapes are tiny; the long-row modes are reached with explicit small tiles.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE

from tokennorm import reference as R
from tokennorm.kernels import config as kconfig
from tokennorm.kernels.config import CHUNKED, LONG_ROWS, ROWS, SEGMENT, KernelConfig
from tokennorm.kernels.launch import Modulation, ada_norm_backward, norm_forward

pytestmark = pytest.mark.interpret

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
# (forward, backward) configs reaching each kernel: 24 channels in 16-column chunks or segments.
MODES = {
    "rows": (None, None),
    "chunked/long_rows": (KernelConfig(CHUNKED, 16, 1), KernelConfig(LONG_ROWS, 16, 1)),
    "long_rows/segment": (KernelConfig(LONG_ROWS, 16, 1), KernelConfig(SEGMENT, 16, 1, block_m=2)),
}
# Max error relative to the largest reference value of each tensor: float32 math rounded once to the output
# dtype (≤ ½ ulp, twice for slack), float32 roundoff of short sums; float64 against the reference's own order.
REL = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7, F16: 2.0**-10}


def _case(b, t, c, dtype, per_sample=True, gate=True, residual=True, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(shape, generator=g, dtype=F64) * scale + shift).to(dt)

    mod = (b, c) if per_sample else (b, t, c)
    p_dtype = F32 if dtype in (BF16, F16) else dtype
    return dict(
        x=rnd(b, t, c, scale=2.0),
        shift=rnd(*mod),
        scale=rnd(*mod, scale=0.5),
        gate=rnd(*mod) if gate else None,
        residual=rnd(b, t, c, dt=p_dtype) if residual else None,  # a float32 stream under 16-bit activations
        weight=rnd(c, scale=0.1, shift=1.0, dt=p_dtype) if affine else None,
        bias=rnd(c, scale=0.1, dt=p_dtype) if affine else None,
        dy=rnd(b, t, c),
        dh=rnd(b, t, c, dt=p_dtype if residual else dtype),
    )


def _run(t, norm, configs=(None, None), eps=1e-5):
    """The kernels at the launch level, as tokennorm.ada_norm's Triton path calls them."""
    x = t["x"]
    b, tokens, c = x.shape
    dev = lambda v: None if v is None else v.to(KERNEL_DEVICE)  # noqa: E731
    rows = lambda v: None if v is None else dev(v).reshape(-1, c)  # noqa: E731
    per_sample = t["shift"].dim() == 2
    mod = Modulation(rows(t["shift"]), rows(t["scale"]), rows(t["gate"]), tokens if per_sample else 1)
    residual = rows(t["residual"])
    h_dtype = residual.dtype if residual is not None else x.dtype
    store_h = residual is not None or t["gate"] is not None
    is_rms = norm == "rmsnorm"
    fwd = norm_forward(
        rows(x),
        dev(t["weight"]),
        dev(t["bias"]),
        residual,
        None,
        eps,
        0.0,
        0.0,
        is_rms,
        h_dtype if store_h else None,
        config=configs[0],
        modulation=mod,
    )
    separate_dres = residual is not None and (t["gate"] is not None or residual.dtype != x.dtype)
    bwd, mod_grads = ada_norm_backward(
        rows(t["dy"]),
        fwd.h if store_h else rows(x),
        rows(x),
        dev(t["weight"]),
        dev(t["bias"]),
        fwd.mean,
        fwd.rstd,
        rows(t["dh"]) if store_h else None,
        mod,
        is_rms,
        t["weight"] is not None,
        t["bias"] is not None,
        x.dtype,
        residual.dtype if separate_dres else None,
        (True, True, t["gate"] is not None),
        config=configs[1],
    )
    assert (mod_grads.dshift is None) == (not per_sample)  # per token, dshift is dy itself: the caller's
    out = {
        "y": fwd.y,
        "h": fwd.h,
        "dx": bwd.dx,
        "dshift": mod_grads.dshift if per_sample else rows(t["dy"]),
        "dscale": mod_grads.dscale,
        "dgate": mod_grads.dgate,
    }
    if residual is not None:
        out["dresidual"] = bwd.dresidual if separate_dres else bwd.dx
    if t["weight"] is not None:
        out["dweight"], out["dbias"] = bwd.dweight, bwd.dbias
    return out


def _reference(t, norm, eps=1e-5):
    t64 = {k: None if v is None else v.double() for k, v in t.items()}
    store_h = t["residual"] is not None or t["gate"] is not None
    args = dict(gate=t64["gate"], residual=t64["residual"], norm=norm, weight=t64["weight"], bias=t64["bias"], eps=eps)
    y, h = R.ada_norm(t64["x"], t64["shift"], t64["scale"], **args)
    g = R.ada_norm_backward(t64["dy"], t64["dh"] if store_h else None, t64["x"], t64["shift"], t64["scale"], **args)
    return {
        "y": y,
        "h": h,
        "dx": g.dx,
        "dresidual": g.dresidual,
        "dshift": g.dshift,
        "dscale": g.dscale,
        "dgate": g.dgate,
        "dweight": g.dweight,
        "dbias": g.dbias,
    }


def _check(got, want, dtype):
    for name, value in got.items():
        if value is None:
            assert want[name] is None or name == "h", name
            continue
        ref = want[name].reshape(value.shape)
        rel = REL[F64] if dtype == F64 else REL[value.dtype] if name in ("y", "dx", "h", "dresidual") else REL[F32]
        err = (value.double().cpu() - ref).abs().max().item()
        bound = rel * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("per_sample", [True, False], ids=["per_sample", "per_token"])
def test_every_mode_matches_the_float64_reference(mode, per_sample):
    """Whole rows with both norms; the long-row modes (slow interpreted) LayerNorm per sample, RMSNorm per token."""
    t = _case(3, 5, 24, F32, per_sample)
    norms = ("layernorm", "rmsnorm") if mode == "rows" else ("layernorm" if per_sample else "rmsnorm",)
    for norm in norms:
        _check(_run(t, norm, MODES[mode]), _reference(t, norm), F32)


@pytest.mark.parametrize("dtype", [BF16, F16, F64])
def test_dtypes(dtype):
    """16-bit x and modulations with a float32 residual stream and float32 γ/β; float64 throughout."""
    t = _case(2, 6, 40, dtype)
    out = _run(t, "layernorm")
    assert out["y"].dtype == dtype and out["dx"].dtype == dtype
    assert out["h"].dtype == t["residual"].dtype
    _check(out, _reference(t, "layernorm"), dtype)


@pytest.mark.parametrize(
    "gate,residual,affine",
    [
        (False, False, True),  # AdaLayerNormContinuous: modulation only, h = x
        (True, False, False),  # gate only: h = gate ⊙ x
        (False, True, False),  # residual only
    ],
    ids=["modulation-only", "gate-only", "residual-only"],
)
def test_without_each_optional_input(gate, residual, affine):
    t = _case(2, 4, 24, F32, gate=gate, residual=residual, affine=affine)
    for norm in ("layernorm", "rmsnorm"):
        _check(_run(t, norm), _reference(t, norm), F32)


@pytest.mark.parametrize("per_program", [32, 1], ids=["token-ranges", "whole-samples"])
def test_per_sample_sums_over_split_or_grouped_samples(per_program):
    """The rows backward sums per-sample gradients in (sample, token range) partials: with many programs per
    sample each sample's tokens are split into ranges; with fewer programs than samples a program takes several
    whole samples. Tiles of 2 rows over 5 tokens per sample never straddle two samples."""
    t = _case(6, 5, 24, F32, seed=3)
    config = KernelConfig(ROWS, 32, 1, block_m=2, programs_per_sm=per_program)
    _check(_run(t, "layernorm", (config, config)), _reference(t, "layernorm"), F32)
    programs, per_program_samples, splits, _ = kconfig.sample_groups(6, 5, per_program * 4)  # 4 'SMs'
    assert (splits > 1) == (per_program == 32) and (per_program_samples > 1) == (per_program == 1)


def test_bitwise_deterministic():
    t = _case(3, 7, 40, BF16, seed=5)
    first, second = _run(t, "layernorm"), _run(t, "layernorm")
    for name in first:
        assert torch.equal(first[name], second[name]), name
