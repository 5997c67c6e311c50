"""Who is compared: tokennorm, torch eager, torch.compile, and every installed peer (Liger, quack, apex,
flash-attn's Triton norms, TransformerEngine).

Each implementation turns a :class:`~tokennorm.tools.bench.cases.Case` into a function ``fn(x, residual, weight,
bias)`` returning y (plain norms) or (y, h) (Add & Norm, h = residual + dropout(x)), or raises
:class:`Unsupported` with a one-line reason. Peers are imported only when a case asks for them, never installed;
torch too, so that the command line can list the implementations without loading it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

from tokennorm.tools.bench.cases import ADALN_TOKENS, CHANNELS_FIRST_SPATIAL, Case

if TYPE_CHECKING:
    from torch import Tensor

NormOut = Union["Tensor", tuple["Tensor", "Tensor"]]
NormFn = Callable[["Tensor", Optional["Tensor"], "Tensor", Optional["Tensor"]], NormOut]

EPS = 1e-5
ADALN_EPS = 1e-6  # DiT's
LIGER_MAX_N = 65536  # Liger's kernels keep a whole row in one block and refuse longer rows


class Unsupported(Exception):
    """The implementation cannot run this case; the message says why, in one line."""


def _issue18_extras(case: Case, x: Tensor) -> dict:
    """The inputs issue 18's ops take beyond (x, residual, γ, β), seeded alike for every implementation: AdaLN's
    [B, N] shift/scale/gate, DyT's α. They require gradients in forward+backward cases (their gradients are part
    of the step; a few bytes per sample, accumulated across calls)."""
    import torch

    g = torch.Generator(device=x.device).manual_seed(18)
    grad = case.direction == "fwdbwd"

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(shape, generator=g, device=x.device, dtype=x.dtype) * scale).requires_grad_(grad)

    if case.op.family == "adaln":
        b = case.m // _adaln_tokens(case)
        return {"shift": randn(b, case.n, scale=0.1), "scale": randn(b, case.n, scale=0.1), "gate": randn(b, case.n)}
    return {"alpha": (0.5 + 0.1 * torch.randn(1, generator=g, device=x.device)).to(x.dtype).requires_grad_(grad)}


def _adaln_tokens(case: Case) -> int:
    tokens = min(ADALN_TOKENS, case.m)
    if case.m % tokens:
        raise Unsupported(f"M = {case.m} is not a whole number of {tokens}-token samples")
    return tokens


def _spatial(case: Case) -> int:
    spatial = min(CHANNELS_FIRST_SPATIAL, case.m)
    if case.m % spatial:
        raise Unsupported(f"M = {case.m} is not a whole number of {spatial}-pixel maps")
    return spatial


def _issue18(case: Case, adaln: Callable, dyt: Callable, add_dyt: Callable, channels_first: Callable) -> NormFn:
    """``fn(x, r, w, b)`` of issue 18's op ``case.op`` from one implementation's four functions, the extra inputs
    made on the first call (outside the timed ones)."""
    op, m, n = case.op, case.m, case.n
    extras: dict = {}
    if op.family == "adaln":
        tokens = _adaln_tokens(case)

        def run(x, r, w, b):
            if not extras:
                extras.update(_issue18_extras(case, x))
            y, h = adaln(x.view(m // tokens, tokens, n), r.view(m // tokens, tokens, n), **extras)
            return y.view(m, n), h.view(m, n)
    elif op.family == "dyt":

        def run(x, r, w, b):
            if not extras:
                extras.update(_issue18_extras(case, x))
            return add_dyt(x, r, extras["alpha"], w, b) if op.add else dyt(x, extras["alpha"], w, b)
    else:
        spatial = _spatial(case)

        def run(x, r, w, b):
            # the output stored channels first: what the next convolution reads (a copy after torch's permute)
            return channels_first(x.view(m // spatial, n, spatial), w, b).reshape(m, n)

    return run


def _torch_eager(case: Case) -> NormFn:
    import torch
    import torch.nn.functional as F

    shape, op = (case.n,), case.op
    if op.family != "norm":

        def adaln(x, r, shift, scale, gate):
            h = r + gate[:, None] * x
            return F.layer_norm(h, shape, eps=ADALN_EPS) * (1 + scale[:, None]) + shift[:, None], h

        def dyt(h, alpha, w, b):
            return w * torch.tanh(alpha * h) + b

        def channels_first(x, w, b):  # what ConvNeXt and timm's LayerNorm2d do
            return F.layer_norm(x.permute(0, 2, 1), shape, w, b, EPS).permute(0, 2, 1)

        def add_dyt(x, r, alpha, w, b):
            h = r + x
            return dyt(h, alpha, w, b), h

        return _issue18(case, adaln, dyt, add_dyt, channels_first)

    def norm(h: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        if op.norm == "layernorm":
            return F.layer_norm(h, shape, w, b, EPS)
        return F.rms_norm(h, shape, w, EPS)

    if not op.add:
        return lambda x, r, w, b: norm(x, w, b)

    def add_norm(x: Tensor, r: Tensor, w: Tensor, b: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        h = r + (F.dropout(x, op.dropout_p, training=True) if op.dropout_p else x)
        return norm(h, w, b), h

    return add_norm


def _torch_compile(case: Case) -> NormFn:
    import torch

    # One static-shape graph per case. The reset drops the previous cases' graphs, which would otherwise hit
    # dynamo's recompile limit over a sweep and fall back to eager (or to slower dynamic-shape kernels).
    torch._dynamo.reset()
    return torch.compile(_torch_eager(case), dynamic=False)


def _tokennorm(case: Case) -> NormFn:
    import tokennorm
    from tokennorm import functional as tn

    shape, op = (case.n,), case.op
    if op.family != "norm":
        return _issue18(
            case,
            lambda x, r, shift, scale, gate: tokennorm.ada_norm(
                x, shift, scale, gate=gate, residual=r, eps=ADALN_EPS, prenorm=True
            ),
            tokennorm.dyt,
            lambda x, r, alpha, w, b: tokennorm.add_dyt(x, r, alpha, w, b, prenorm=True),
            lambda x, w, b: tokennorm.channels_first_layer_norm(x, w, b, EPS),
        )
    if op.add:
        return lambda x, r, w, b: tn.add_norm(x, r, w, b, EPS, norm=op.norm, dropout_p=op.dropout_p, prenorm=True)
    if op.norm == "layernorm":
        return lambda x, r, w, b: tn.layer_norm(x, shape, w, b, EPS)
    return lambda x, r, w, b: tn.rms_norm(x, shape, w, EPS)


def _liger(case: Case) -> NormFn:
    from liger_kernel.transformers import functional as lf

    op = case.op
    if op.family != "norm":
        if op.family != "dyt" or op.add or not hasattr(lf, "liger_dyt"):
            raise Unsupported("no kernel for this op" if op.family != "dyt" else "no fused Add & DyT")
        return _issue18(case, None, lf.liger_dyt, None, None)
    if op.dropout_p:
        raise Unsupported("no dropout in its fused Add & Norm")
    if case.n > LIGER_MAX_N:
        raise Unsupported(f"refuses rows longer than {LIGER_MAX_N:,} elements")
    if op.add:
        fused = getattr(lf, "liger_fused_add_rms_norm", None)
        if op.norm == "layernorm" or fused is None:
            raise Unsupported(f"no fused Add & {'LayerNorm' if op.norm == 'layernorm' else 'RMSNorm'}")
        return lambda x, r, w, b: fused(x, r, w, EPS)
    if op.norm == "layernorm":
        return lambda x, r, w, b: lf.liger_layer_norm(x, w, b, EPS)
    return lambda x, r, w, b: lf.liger_rms_norm(x, w, EPS)


def _quack(case: Case) -> NormFn:
    from quack import rmsnorm as qr

    op = case.op
    if op.family != "norm":
        raise Unsupported("no kernel for this op")
    if op.dropout_p:
        raise Unsupported("no dropout")
    if op.norm == "rmsnorm":
        if op.add:
            return lambda x, r, w, b: qr.rmsnorm(x, w, residual=r, eps=EPS, prenorm=True)
        return lambda x, r, w, b: qr.rmsnorm(x, w, eps=EPS)
    layernorm_fwd = getattr(qr, "layernorm_fwd", None)
    if op.add or case.direction != "fwd" or layernorm_fwd is None:
        raise Unsupported("its LayerNorm is forward-only, without residual")
    params: dict[str, Tensor] = {}

    def layer_norm(x: Tensor, r: Optional[Tensor], w: Tensor, b: Optional[Tensor]) -> Tensor:
        if not params:  # quack's LayerNorm takes float32 parameters: convert once, outside the timed calls
            params.update(w=w.float(), b=b.float())
        return layernorm_fwd(x, params["w"], params["b"], eps=EPS)

    return layer_norm


def _apex(case: Case) -> NormFn:
    from apex.normalization import fused_layer_norm as afl

    shape, op = (case.n,), case.op
    if op.family != "norm":
        raise Unsupported("no kernel for this op")
    if op.add:
        raise Unsupported("no fused Add & Norm")
    if op.norm == "layernorm":
        return lambda x, r, w, b: afl.fused_layer_norm_affine(x, w, b, shape, EPS)
    rms = getattr(afl, "fused_rms_norm_affine", None)
    if rms is None:
        raise Unsupported("this apex has no fused RMSNorm")
    return lambda x, r, w, b: rms(x, w, shape, EPS)


def _flash_attn(case: Case) -> NormFn:
    from flash_attn.ops.triton.layer_norm import layer_norm_fn

    op = case.op
    if op.family != "norm":
        raise Unsupported("no kernel for this op")
    is_rms = op.norm == "rmsnorm"
    if not op.add:
        return lambda x, r, w, b: layer_norm_fn(x, w, b, eps=EPS, is_rms_norm=is_rms)
    return lambda x, r, w, b: layer_norm_fn(
        x, w, b, residual=r, eps=EPS, dropout_p=op.dropout_p, prenorm=True, is_rms_norm=is_rms
    )


def _transformer_engine(case: Case) -> NormFn:
    import torch
    import transformer_engine.pytorch as te

    op = case.op
    if op.add:
        raise Unsupported("no fused Add & Norm among its public modules")
    module: dict[str, torch.nn.Module] = {}

    def norm(x: Tensor, r: Optional[Tensor], w: Tensor, b: Optional[Tensor]) -> Tensor:
        if not module:  # its norms are modules: built once, on the first call, with the case's parameters
            cls = te.LayerNorm if op.norm == "layernorm" else te.RMSNorm
            built = cls(case.n, eps=EPS, params_dtype=w.dtype, device=x.device)
            with torch.no_grad():
                built.weight.copy_(w)
                if b is not None:
                    built.bias.copy_(b)
            module["norm"] = built
        return module["norm"](x)

    return norm


@functools.lru_cache(maxsize=None)
def import_problem(module: str, package: str) -> Optional[str]:
    """Why ``module`` cannot be imported (None when it can). Cached: a failed import is not retried."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return f"not installed (pip install {package})"
        return f"{module} does not import: {exc}"
    except Exception as exc:  # a broken install (missing CUDA extension, ABI mismatch): report, never crash
        return f"{module} does not import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@dataclass(frozen=True)
class Impl:
    """One implementation under test."""

    name: str
    build: Callable[[Case], NormFn]
    requires: tuple[str, ...] = ()  # modules that must import
    package: str = ""  # what to install for them
    cuda_only: bool = False
    cpu_default: bool = True  # in the default set of a CPU run

    def prepare(self, case: Case, device: str) -> NormFn:
        """The function for ``case`` on ``device``; Unsupported when this implementation cannot run it."""
        if self.cuda_only and not device.startswith("cuda"):  # checked first: GPU packages are not imported
            raise Unsupported("needs a CUDA device")
        for module in self.requires:
            problem = import_problem(module, self.package)
            if problem:
                raise Unsupported(problem)
        return self.build(case)


IMPLEMENTATIONS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl("tokennorm", _tokennorm),
        Impl("torch", _torch_eager),
        # Each case compiles for seconds on a CPU: opt-in there (--impls), so the default CPU run stays short.
        Impl("compile", _torch_compile, cpu_default=False),
        Impl("liger", _liger, ("liger_kernel.transformers.functional",), "liger-kernel", cuda_only=True),
        Impl("quack", _quack, ("quack.rmsnorm",), "quack-kernels", cuda_only=True),
        Impl("apex", _apex, ("apex.normalization.fused_layer_norm",), "apex (built from source)", cuda_only=True),
        Impl("flash-attn", _flash_attn, ("flash_attn.ops.triton.layer_norm",), "flash-attn", cuda_only=True),
        Impl("te", _transformer_engine, ("transformer_engine.pytorch",), "transformer-engine[pytorch]", cuda_only=True),
    )
}

REFERENCE = _torch_eager  # what every implementation's forward output is checked against
