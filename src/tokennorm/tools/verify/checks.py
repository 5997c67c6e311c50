"""``tokennorm verify``: check every op, forward and backward, against the float64 reference on this machine.

The seeds' "compute LayerNorm by hand and compare it with nn.LayerNorm", as a tool. Each op runs through
tokennorm's public functions (:mod:`tokennorm.functional`) with the chosen backend, in every dtype the device
supports, over a spread of shapes; its outputs and its gradients (of input, weight, bias, residual) are compared
with :mod:`tokennorm.reference` evaluated in float64 on the float64 upcast of the very same inputs (the
backward from the reference's explicit ``*_backward`` formulas, not autograd).

A check passes when ``max|out − ref| ≤ k · u · S`` (u: the dtype's unit roundoff, k: :data:`ROUNDOFFS`, S: the
largest term the tensor is computed from, see :func:`term_magnitudes`).
Exit code 0 when every check passes, 1 when any fails, 2 when the run cannot start (bad option for this machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Optional

import torch
from torch import Tensor

HELP = "Check every op, forward and backward, in every dtype, against the float64 reference on this machine."

DIRECTIONS = ("forward", "backward")

# Unit roundoff u = 2^-p of each dtype (p = significand bits): the largest relative error of one rounding.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}


# Tolerances, in unit roundoffs u of the dtype, per dtype and direction. A check passes when
#     max|out − ref| ≤ k · u · S
# where S is the largest magnitude among the terms the tensor is computed from (term_magnitudes): the textbook
# bound for rounding in sums and differences. S ≈ max|ref| on ordinary rows; it is larger exactly where rounding
# is amplified, which a bare max|ref| misses: in a row of equal values x̂ = 0, yet torch's own float64 result is
# off by up to ~300u (u·|x|·rstd with rstd = 1/sqrt(ε)), and a dγ summed over 64 rows is smaller than its terms.
# Measured on the default sweep over 10 seeds (torch backend, CPU), the worst error was ≤ 1.7 k·u·S-units forward
# and ≤ 2.2 backward for bf16/fp16 (one rounding of y to the dtype, ≤ u; plus the rounding of h = residual + x
# before Add & Norm normalizes it, and of dy·γ in backward), and ≤ 3.6 forward, ≤ 5.7 backward for fp32/fp64
# (fp32/fp64 reductions over n ≤ 4096). The factors below leave 2–10× headroom for other summation orders (Triton's
# tree reductions, GPU kernels) while staying far below every real mistake: the unbiased variance is off by
# ≥ 1/(2n) = 1.2e-4 (2000u in fp32) and ε outside the root by 4.6% on the σ = 0.01 case (2.7× the bf16 tolerance).
ROUNDOFFS: dict[tuple[torch.dtype, str], float] = {
    (torch.float64, "forward"): 32,
    (torch.float64, "backward"): 64,
    (torch.float32, "forward"): 32,
    (torch.float32, "backward"): 64,
    (torch.bfloat16, "forward"): 4,
    (torch.bfloat16, "backward"): 8,
    (torch.float16, "forward"): 4,
    (torch.float16, "backward"): 8,
}


def tolerance(dtype: torch.dtype, direction: str, magnitude: float) -> float:
    """The largest |out − ref| accepted for a tensor of ``dtype`` whose terms are at most ``magnitude``."""
    return ROUNDOFFS[(dtype, direction)] * UNIT_ROUNDOFF[dtype] * magnitude


LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; RMSNorm runs with eps=None (torch's default)


@dataclass(frozen=True)
class Op:
    """One public op configuration: a plain norm, or Add & Norm (with a residual) returning y, or (y, h) if pre."""

    name: str
    norm: str  # "layernorm" | "rmsnorm"
    add: bool = False
    prenorm: bool = False


# add_norm(ln|rms, post|pre): norm="layernorm"|"rmsnorm", prenorm=False|True, always with a residual.
OPS: tuple[Op, ...] = (
    Op("layer_norm", "layernorm"),
    Op("rms_norm", "rmsnorm"),
    Op("add_norm(ln, post)", "layernorm", add=True),
    Op("add_norm(ln, pre)", "layernorm", add=True, prenorm=True),
    Op("add_norm(rms, post)", "rmsnorm", add=True),
    Op("add_norm(rms, pre)", "rmsnorm", add=True, prenorm=True),
)


@dataclass(frozen=True)
class Case:
    """An input shape, how many trailing dims are normalized, and the tokens' scale σ."""

    shape: tuple[int, ...]
    normalized_ndim: int = 1
    scale: float = 1.0

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.normalized_ndim :]

    @property
    def label(self) -> str:
        k = len(self.shape) - self.normalized_ndim
        batch = "×".join(map(str, self.shape[:k]))
        normalized = "×".join(map(str, self.normalized_shape))
        # 2×3×(8×64): the parenthesised dims are normalized together, when there is more than one
        text = f"{batch}×({normalized})" if self.normalized_ndim > 1 else f"{batch}×{normalized}"
        if self.scale != 1.0:
            text += f", σ={self.scale:g}"
        return text


# Sizes 1 and primes, realistic widths, multi-dim normalized_shape, and small-variance tokens (σ² = 1e-4 ≈ 10ε)
# where ε's placement in the formula shows.
CASES: tuple[Case, ...] = (
    Case((1, 1)),
    Case((3, 7)),
    Case((8, 1000)),
    Case((8, 1000), scale=0.01),
    Case((4, 16, 768)),
    Case((2, 3, 4096)),
    Case((5, 4, 6), normalized_ndim=2),
    Case((2, 3, 8, 64), normalized_ndim=2),
)
QUICK_CASES: tuple[Case, ...] = (CASES[0], CASES[1], CASES[3], CASES[6])


@dataclass
class Inputs:
    """The tensors of one check, on the CPU in the dtype under test (None where the op takes none)."""

    x: Tensor
    residual: Optional[Tensor]
    weight: Tensor
    bias: Optional[Tensor]
    dy: Tensor
    dh: Optional[Tensor]


@dataclass
class Check:
    """One compared tensor: an output (y, h) or a gradient (dx, dweight, dbias, dresidual) of one op."""

    op: str
    direction: str
    dtype: str
    shape: list[int]
    normalized_shape: list[int]
    scale: float
    tensor: str
    max_abs_error: Optional[float]
    max_abs_reference: Optional[float]
    max_rel_error: Optional[float]  # max_abs_error / max_abs_reference
    term_magnitude: Optional[float]  # S in the tolerance k·u·S
    tolerance: float
    passed: bool
    error: Optional[str] = None  # the exception, when the op raised

    @property
    def ratio(self) -> float:
        """Error over tolerance: ≤ 1 passes; inf for a raised op or a non-finite output."""
        if self.max_abs_error is None or (not self.passed and not math.isfinite(self.max_abs_error)):
            return math.inf
        return self.max_abs_error / self.tolerance


def make_inputs(op: Op, case: Case, dtype: torch.dtype, seed: int) -> Inputs:
    """Seeded inputs: tokens ``σ · (z + m)`` with z ~ N(0, 1) and a per-token offset m ~ N(0, 1).

    Everything is drawn in float64 in a fixed order (x is the same for every op) and rounded to ``dtype`` once.
    """
    g = torch.Generator().manual_seed(seed)
    ns = case.normalized_shape
    token_shape = case.shape[: len(case.shape) - len(ns)] + (1,) * len(ns)

    def randn(shape) -> Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64)

    x = case.scale * (randn(case.shape) + randn(token_shape))
    residual = case.scale * (randn(case.shape) + randn(token_shape))
    weight = 1.0 + 0.1 * randn(ns)
    bias = 0.1 * randn(ns)
    dy, dh = randn(case.shape), randn(case.shape)
    return Inputs(
        x=x.to(dtype),
        residual=residual.to(dtype) if op.add else None,
        weight=weight.to(dtype),
        bias=bias.to(dtype) if op.norm == "layernorm" else None,
        dy=dy.to(dtype),
        dh=dh.to(dtype) if op.prenorm else None,
    )


def _run_tokennorm(op: Op, inp: Inputs, ns: tuple[int, ...], device: str) -> tuple[dict, dict]:
    """Outputs and gradients from tokennorm's public functions, as float64 CPU tensors."""
    from tokennorm import functional  # looked up at call time, so a patched function is the one checked

    leaves = {
        name: t.to(device, copy=True).requires_grad_()
        for name, t in (("x", inp.x), ("residual", inp.residual), ("weight", inp.weight), ("bias", inp.bias))
        if t is not None
    }
    x, w, b, r = leaves["x"], leaves["weight"], leaves.get("bias"), leaves.get("residual")
    if op.add:
        eps = LAYER_NORM_EPS if op.norm == "layernorm" else None
        out = functional.add_norm(x, r, w, b, eps, norm=op.norm, prenorm=op.prenorm, normalized_shape=ns)
        outs = {"y": out[0], "h": out[1]} if op.prenorm else {"y": out}
    elif op.norm == "layernorm":
        outs = {"y": functional.layer_norm(x, ns, w, b, LAYER_NORM_EPS)}
    else:
        outs = {"y": functional.rms_norm(x, ns, w)}
    for name, t in outs.items():  # a drop-in returns the input's dtype and shape
        if t.dtype != inp.x.dtype or t.shape != inp.x.shape:
            raise TypeError(f"{name} is {t.dtype} of shape {list(t.shape)}, expected {inp.x.dtype} of "
                            f"shape {list(inp.x.shape)}")
    upstream = [inp.dy.to(device)] + ([inp.dh.to(device)] if "h" in outs else [])
    torch.autograd.backward(list(outs.values()), upstream)
    as64 = {name: t.detach().cpu().double() for name, t in outs.items()}
    grads = {"d" + name: leaf.grad.cpu().double() for name, leaf in leaves.items()}
    return as64, grads


def _run_reference(op: Op, inp: Inputs, ns: tuple[int, ...], dtype: torch.dtype) -> tuple[dict, dict]:
    """The same outputs and gradients from :mod:`tokennorm.reference` on the float64 upcast of the inputs."""
    from tokennorm import reference

    x, r, w, b, dy, dh = (
        None if t is None else t.double() for t in (inp.x, inp.residual, inp.weight, inp.bias, inp.dy, inp.dh)
    )
    # eps=None means the default of the dtype under test (fp32's epsilon for bf16/fp16/fp32), not float64's.
    eps = LAYER_NORM_EPS if op.norm == "layernorm" else reference.default_rms_eps(dtype)
    if op.add:
        y, h = reference.add_norm(x, r, ns, w, b, eps, norm=op.norm)
        g = reference.add_norm_backward(dy, dh, h, x, r, ns, w, b, eps, norm=op.norm)
        outs = {"y": y, "h": h} if op.prenorm else {"y": y}
        return outs, {"dx": g.dx, "dresidual": g.dresidual, "dweight": g.dweight, "dbias": g.dbias}
    if op.norm == "layernorm":
        g = reference.layer_norm_backward(dy, x, ns, w, b, eps)
        return {"y": reference.layer_norm(x, ns, w, b, eps)}, {"dx": g.dx, "dweight": g.dweight, "dbias": g.dbias}
    g = reference.rms_norm_backward(dy, x, ns, w, eps)
    return {"y": reference.rms_norm(x, ns, w, eps)}, {"dx": g.dx, "dweight": g.dweight}


def term_magnitudes(op: Op, inp: Inputs, ns: tuple[int, ...], dtype: torch.dtype) -> dict[str, float]:
    """For each compared tensor, the largest magnitude among the terms it is computed from.

    Rounding errors scale with these, not with the result: a row of equal values has x̂ = 0 exactly, yet
    computing it as x·rstd − μ·rstd (as fused kernels do) leaves an error of u·|x|·rstd, with rstd = 1/sqrt(ε).
    Terms: x̂ in its uncentred form |x|·rstd; dx = rstd·dy·γ (+ dh); dγ = Σ_rows dy·x̂; dβ = Σ_rows dy.
    """
    from tokennorm import reference

    n = math.prod(ns)
    x, w, dy = inp.x.double(), inp.weight.double().reshape(-1), inp.dy.double().reshape(-1, n).abs()
    h = (x if inp.residual is None else x + inp.residual.double()).reshape(-1, n)  # [rows, n]
    eps = LAYER_NORM_EPS if op.norm == "layernorm" else reference.default_rms_eps(dtype)
    if op.norm == "layernorm":
        rstd = torch.rsqrt(h.var(dim=1, correction=0, keepdim=True) + eps)  # [rows, 1]
    else:
        rstd = torch.rsqrt(h.square().mean(dim=1, keepdim=True) + eps)  # [rows, 1]
    xs = h.abs() * rstd  # [rows, n]
    beta = 0.0 if inp.bias is None else inp.bias.double().abs().max().item()
    dh = 0.0 if inp.dh is None else inp.dh.double().abs().max().item()
    mags = {
        "y": (xs * w.abs()).max().item() + beta,
        "dx": (rstd * dy * w.abs()).max().item() + dh,
        "dweight": (dy * xs).sum(dim=0).max().item(),
        "dbias": dy.sum(dim=0).max().item(),
    }
    if inp.residual is not None:
        mags["h"] = (inp.x.double().abs() + inp.residual.double().abs()).max().item()
        mags["dresidual"] = mags["dx"]
    return mags


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_op(op: Op, case: Case, dtype: torch.dtype, device: str, seed: int) -> list[Check]:
    """Every output and gradient of ``op`` on ``case`` in ``dtype``, compared with the float64 reference."""
    base = dict(op=op.name, dtype=_dtype_name(dtype), shape=list(case.shape),
                normalized_shape=list(case.normalized_shape), scale=case.scale)
    inp = make_inputs(op, case, dtype, seed)
    ns = case.normalized_shape
    try:
        got = _run_tokennorm(op, inp, ns, device)
    except Exception as exc:  # a raising op is a failed check, reported with its message
        return [
            Check(**base, direction=d, tensor="-", max_abs_error=None, max_abs_reference=None, max_rel_error=None,
                  term_magnitude=None, tolerance=math.nan, passed=False, error=f"{type(exc).__name__}: {exc}")
            for d in DIRECTIONS
        ]
    want = _run_reference(op, inp, ns, dtype)
    magnitudes = term_magnitudes(op, inp, ns, dtype)
    checks = []
    for direction, got_t, want_t in zip(DIRECTIONS, got, want):
        for name, ref in want_t.items():
            if ref is None:
                continue
            err = (got_t[name] - ref).abs().max().item()
            ref_max = ref.abs().max().item()
            bound = tolerance(dtype, direction, magnitudes[name])
            checks.append(Check(
                **base, direction=direction, tensor=name, max_abs_error=err, max_abs_reference=ref_max,
                max_rel_error=err / ref_max if ref_max > 0 else (0.0 if err == 0 else math.inf),
                term_magnitude=magnitudes[name], tolerance=bound, passed=bool(err <= bound),
            ))
    return checks


def supported_dtypes(device: str) -> list[torch.dtype]:
    """float64, float32, bfloat16 (on CUDA only where the GPU supports it) and float16."""
    dtypes = [torch.float64, torch.float32]
    if device != "cuda" or torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    return dtypes + [torch.float16]


def run_checks(device: str, cases: tuple[Case, ...], seed: int = 0) -> list[Check]:
    """The whole sweep: every op × dtype × case, forward and backward, with the current backend."""
    return [
        check
        for dtype in supported_dtypes(device)
        for i, case in enumerate(cases)
        for op in OPS
        for check in check_op(op, case, dtype, device, seed + i)
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where the ops run (default: cuda if available, else cpu)")
    parser.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                        help="TOKENNORM_BACKEND for this run (default: the environment's, else auto)")
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_CASES)} shapes instead of {len(CASES)}")
    parser.add_argument("--json", metavar="PATH", default=None, help="write every check and the environment here")
    parser.add_argument("--all", action="store_true", help="list every check, not the worst per op/direction/dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")


def _setup_error(device: str, backend: str) -> Optional[str]:
    """Why this device/backend combination cannot run here, or None."""
    from tokennorm.backend import triton_available

    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available to torch on this machine; use --device cpu."
    runs_triton = backend == "triton" or (backend == "auto" and device == "cuda")
    if runs_triton and not triton_available():
        return "the triton backend needs the 'triton' package: pip install triton (or use --backend torch)."
    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            "--backend triton on the CPU runs Triton's interpreter, which must be switched on before tokennorm is "
            "imported:\n    TRITON_INTERPRET=1 tokennorm verify --backend triton --device cpu\n"
            "(slow: add --quick), or use a CUDA device."
        )
    return None


def _environment(device: str, backend: str, quick: bool, seed: int) -> dict:
    def version(pkg: str) -> Optional[str]:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    effective = "triton" if backend == "triton" or (backend == "auto" and device == "cuda") else "torch"
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": name,
        "backend": backend,
        "backend_used": effective,
        "tokennorm": version("tokennorm"),
        "torch": torch.__version__,
        "triton": version("triton"),
        "python": platform.python_version(),
        "quick": quick,
        "seed": seed,
        "tolerance_rule": "max_abs_error <= roundoffs * unit_roundoff * term_magnitude",
        "roundoffs": {f"{_dtype_name(d)} {direction}": k for (d, direction), k in ROUNDOFFS.items()},
    }


def _worst_per_group(checks: list[Check]) -> list[Check]:
    """The check closest to (or furthest past) its tolerance for each op, direction and dtype, op by op."""
    worst: dict[tuple[str, str, str], Check] = {}
    for c in checks:
        key = (c.op, c.direction, c.dtype)
        if key not in worst or c.ratio > worst[key].ratio:
            worst[key] = c
    order = {name: i for i, name in enumerate([op.name for op in OPS] + list(DIRECTIONS))}
    return sorted(worst.values(), key=lambda c: (order[c.op], order[c.direction]))


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2e}"


SHORT_NAMES = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16",
               "forward": "fwd", "backward": "bwd"}


def _table(checks: list[Check], title: str):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True,
                  pad_edge=False)
    for column in ("op", "dir", "dtype", "shape", "tensor"):
        table.add_column(column)  # words wrap on a narrow terminal; numbers never do
    for column in ("error", "tolerance"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("pass", justify="center", no_wrap=True)
    for c in checks:
        case = Case(tuple(c.shape), len(c.normalized_shape), c.scale)
        table.add_row(c.op, SHORT_NAMES[c.direction], SHORT_NAMES[c.dtype], case.label, c.tensor,
                      _fmt(c.max_abs_error), _fmt(c.tolerance), "[green]✓[/]" if c.passed else "[bold red]✗[/]")
    return table


def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_json(path: str, environment: dict, checks: list[Check]) -> None:
    results = [{k: _json_value(v) for k, v in asdict(c).items()} for c in checks]
    doc = {**environment, "passed": all(c.passed for c in checks), "checks": len(checks), "results": results}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tokennorm.backend import ENV_VAR, backend_name

    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or pipe: no need to wrap at 80
        console = Console(width=120)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    saved = os.environ.get(ENV_VAR)
    if args.backend is not None:
        os.environ[ENV_VAR] = args.backend
    try:
        try:
            backend = backend_name()
        except ValueError as exc:  # a TOKENNORM_BACKEND in the environment that is not a backend
            problem = str(exc)
        else:
            problem = _setup_error(device, backend)
        if problem:
            errors.print(f"[bold red]tokennorm verify:[/] {problem}", highlight=False)
            return 2
        cases = QUICK_CASES if args.quick else CASES
        # The tensors are small: CPU thread-pool hand-offs cost more than they save, and on a busy machine
        # spinning OpenMP workers made the sweep 20x slower (13 s instead of 0.6 s of CPU time).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start = time.perf_counter()
        try:
            checks = run_checks(device, cases, args.seed)
        finally:
            torch.set_num_threads(threads)
        elapsed = time.perf_counter() - start
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved

    env = _environment(device, backend, args.quick, args.seed)
    failed = [c for c in checks if not c.passed]
    if args.all:
        console.print(_table(checks, "every check"))
    else:
        title = f"worst of {len(cases)} shapes per op, direction and dtype (--all: every check)"
        console.print(_table(_worst_per_group(checks), title))
        if failed:
            console.print(_table(failed, "failed checks"))
    for c in failed:
        if c.error and c.direction == DIRECTIONS[0]:
            console.print(f"[red]{c.op} {c.direction} {c.dtype} {c.shape}:[/] {c.error}", highlight=False)
    if args.json:
        write_json(args.json, env, checks)
    n_dtypes = len(supported_dtypes(device))
    scope = (f"{len(OPS)} ops × {n_dtypes} dtypes × {len(cases)} shapes, forward and backward; {device} "
             f"({env['device_name']}), backend {backend} → {env['backend_used']}, torch {torch.__version__}; "
             f"{elapsed:.1f} s")
    if failed:
        console.print(f"[bold red]✗ {len(failed)} of {len(checks)} checks FAILED[/] — {scope}", highlight=False)
        return 1
    console.print(f"[bold green]✓ all {len(checks)} checks passed[/] — {scope}", highlight=False)
    return 0

