"""Does a model's output at one token depend on tokens it must not see? Measured, not assumed.

The claim under test: LayerNorm's statistics are per token, so a causal decoder cannot learn the
future through it and padding cannot disturb real tokens, while BatchNorm mixes tokens, batch items and PAD.
:func:`audit` checks this on any model, for three kinds of leakage:

* ``future``: output position t depends on an input position s > t (checked for causal models);
* ``cross_batch``: batch item i depends on another item j ≠ i;
* ``padding``: a non-PAD output depends on a PAD input (positions marked True in the key-padding mask).

Each is measured twice, in train and in eval mode (they differ for BatchNorm and dropout):

**Autograd.** One forward pass, then vector-Jacobian products ``uᵀ ∂y/∂x`` batched over cotangents with
``torch.autograd.grad(..., is_grads_batched=True)`` (torch.func's vmap over the backward; ``torch.func.vjp``
itself cannot run train-mode BatchNorm, which mutates its running statistics). ``u`` is one fixed random
tensor shaped like the output, restricted to one output position (a row of the token-to-token matrix), to one
batch item, or to all non-PAD outputs. The norm over channels of the gradient at (item j, position s) is the
dependence on that input; a random projection is zero only where the Jacobian block is (with probability 1).
For models that take token ids, x is the embedding: ``model.embed``'s output for models with
``embed(tokens)`` / ``forward_embeddings(emb)``, else the output of the ``nn.Embedding`` applied to the ids.

**Perturbation.** Replace the inputs at some positions by fresh values (new random vectors of x's scale, or
the embeddings of other token ids) and measure how much each output moves, with the same dropout masks (the
RNG is reseeded before every forward pass). It sees dependence autograd cannot: through ``.detach()``,
integer ops or in-place tricks.

**Magnitudes** are relative: every entry of a measurement divided by its largest entry, legitimate dependence
included; 1 means "as strong as the strongest dependence measured", 0 means none. Non-finite values count as
infinite leakage.

**Threshold.** Where the model's graph has no path from x_s to y_t, both measurements give exactly 0: no
gradient flows, and the output is computed from identical values in the same order, bit for bit. Roundoff can
create dependence where the math has none, e.g. a softmax that subtracts the row maximum *before* masking the
future: the future then moves the rounding of every score by a few ulps. Measured in float32 on four such
layers (width 32, [2, 16] tokens, scores up to ±6): ≤ 9e-8 relative, under one eps, by both methods. Real
dependence through statistics shared by M tokens is about 1/M (the BatchNorm demo, M = 2 × 16: up to 0.22
relative). The default tolerance, :func:`default_tol` = 128·eps of the dtype (1.5e-5 in float32, 2.8e-14 in
float64), sits >100× above that roundoff and below 1/M for M up to ~6·10⁴ tokens; audit in float64 to see weaker
dependence. bfloat16/float16 roundoff (eps 8e-3 / 1e-3) hides most real leaks: audit in float32 or float64.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from tokennorm.tools.audit.report import MAX_WHERE, MODES, AuditReport, Finding, Measurement
from tokennorm.tools.audit.subject import as_output, in_mode, make_subject, seeded


def default_tol(dtype: torch.dtype) -> float:
    """Relative dependence above which :func:`audit` reports leakage: 128·eps of ``dtype`` (see module doc)."""
    return 128 * torch.finfo(dtype).eps


def _relative(values: Tensor) -> Tensor:
    """values / max(values) over the measured (non-NaN) entries; non-finite measured values become +inf."""
    measured = ~torch.isnan(values)
    v = torch.where(measured, values.nan_to_num(nan=math.inf, posinf=math.inf), values)
    finite = v[measured & torch.isfinite(v)]
    ref = finite.max() if finite.numel() else v.new_tensor(0.0)
    if ref > 0:
        return v / ref
    return torch.where(measured & (v > 0), math.inf, torch.where(measured, 0.0, math.nan))


def _measure(method: str, rel: Tensor, leak: Tensor, tol: float) -> Measurement:
    """Largest ``rel`` where ``leak`` is True; pinpoints are the (dim 0, dim 1) indices of a 2-D ``rel``."""
    vals = torch.where(leak & ~torch.isnan(rel), rel, torch.zeros_like(rel))
    above = (vals > tol).nonzero().tolist()
    order = sorted(above, key=lambda ij: -vals[ij[0], ij[1]].item())
    return Measurement(method, vals.max().item() if vals.numel() else 0.0, len(above),
                       [(int(i), int(j)) for i, j in order[:MAX_WHERE]])


def _vjp_norms(out: Tensor, x: Tensor, u: Tensor, masks: Tensor, chunk_size: int) -> Tensor:
    """‖(u·mask_k)ᵀ ∂out/∂x‖ over channels for every mask: [K, B, N] from masks [K, B, N]."""
    norms = []
    for start in range(0, masks.shape[0], chunk_size):
        cot = u * masks[start : start + chunk_size, :, :, None]  # [k, B, N, F]
        (g,) = torch.autograd.grad(out, x, cot, retain_graph=True, is_grads_batched=True)  # [k, B, N, C]
        norms.append(torch.linalg.vector_norm(g.double(), dim=-1))
    # NaN marks "not measured" in the matrices, so a NaN gradient becomes +inf: infinite leakage, not silence
    return torch.cat(norms).nan_to_num(nan=math.inf)


def _spread(n: int, k: int) -> list[int]:
    """k positions spread evenly over range(n), ends included (all of them when k ≥ n)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


@dataclass
class _Config:
    causal: bool
    pad: Optional[Tensor]
    kwargs: dict[str, Any]
    tol: Optional[float]
    seed: int
    max_rows: Optional[int]
    max_columns: int
    chunk_size: int
    output_fn: Optional[Callable[[Any], Tensor]]


def _audit_mode(
    model: nn.Module, inputs: Tensor, mode: str, cfg: _Config
) -> tuple[list[Finding], dict[str, Tensor], torch.dtype, float]:
    batch, length = inputs.shape[:2]
    device = inputs.device
    gen = torch.Generator().manual_seed(cfg.seed)
    with in_mode(model, mode == "train"):
        subject = make_subject(model, inputs, cfg.kwargs, cfg.seed, gen)
        tol = default_tol(subject.x.dtype) if cfg.tol is None else cfg.tol

        def forward(z: Tensor) -> Tensor:
            with seeded(cfg.seed, device):
                return as_output(subject.run(z), batch, length, cfg.output_fn)

        x = subject.x.detach().requires_grad_(True)
        out = forward(x)
        with torch.no_grad():
            base = forward(subject.x)

        def moved(where: Tensor) -> Tensor:  # [B, N]: how far each output moves when `where` gets new values
            with torch.no_grad():
                new = forward(subject.fresh(where))
                # an output NaN before and after did not move; one that became (or stopped being) NaN did
                same = (new == base) | (new.isnan() & base.isnan())
                delta = torch.where(same, 0.0, (new - base).double())
                return torch.linalg.vector_norm(delta, dim=-1).nan_to_num(nan=math.inf)  # NaN: see _vjp_norms

        # Autograd: one cotangent mask per matrix row, per batch item, and for all non-PAD outputs.
        n_rows = cfg.max_rows if cfg.max_rows is not None else (length if cfg.causal else 16)
        rows = _spread(length, n_rows)
        eye_n = torch.eye(length, dtype=torch.bool, device=device)
        eye_b = torch.eye(batch, dtype=torch.bool, device=device)
        masks = [eye_n[rows][:, None, :].expand(-1, batch, -1), eye_b[:, :, None].expand(-1, -1, length)]
        has_pad = cfg.pad is not None and bool(cfg.pad.any()) and not bool(cfg.pad.all())
        if has_pad:
            masks.append((~cfg.pad)[None])
        u = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
        norms = _vjp_norms(out, x, u, torch.cat(masks).to(out.dtype), cfg.chunk_size)
        row_norms, item_norms = norms[: len(rows)], norms[len(rows) : len(rows) + batch]  # [R,B,N], [B,B,N]

        grad_matrix = torch.full((length, length), math.nan, dtype=torch.float64)
        grad_matrix[rows] = torch.linalg.vector_norm(row_norms, dim=1).cpu()  # over items j
        grad_rel = _relative(grad_matrix)
        future = torch.ones(length, length, dtype=torch.bool).triu(1)  # input s > output t

        # Perturbation: evenly spread columns plus every column autograd found leaking into the past.
        columns = set(_spread(length, cfg.max_columns))
        if cfg.causal:
            suspects = sorted({s for s in (grad_rel.nan_to_num(0) * future > tol).nonzero()[:, 1].tolist()})
            columns |= set(suspects[: cfg.max_columns])
        pert_matrix = torch.full((length, length), math.nan, dtype=torch.float64)
        for s in sorted(columns):
            pert_matrix[:, s] = torch.linalg.vector_norm(moved(eye_n[s][None].expand(batch, -1)), dim=0).cpu()
        pert_rel = _relative(pert_matrix)

        findings = []

        def add(check: str, autograd: Measurement, perturbation: Measurement) -> None:
            findings.append(Finding(mode, check, autograd, perturbation, tol))

        if cfg.causal:
            add("future", _measure("autograd", grad_rel, future, tol),
                _measure("perturbation", pert_rel, future, tol))
        if batch > 1:
            other = ~eye_b.cpu()
            item_rel = _relative(item_norms.cpu())  # [i, j, s]
            per_item = torch.stack([moved(eye_b[j][:, None].expand(-1, length)).cpu() for j in range(batch)])
            pert_items = _relative(per_item).amax(dim=2).T  # [j, i, t] -> [i, j]
            add("cross_batch", _measure("autograd", item_rel.amax(dim=2), other, tol),
                _measure("perturbation", pert_items, other, tol))
        if has_pad:
            pad = cfg.pad.cpu()
            add("padding", _measure("autograd", _relative(norms[-1].cpu()), pad, tol),
                _measure("perturbation", _relative(moved(cfg.pad).cpu()), ~pad, tol))
    return findings, {"autograd": grad_rel, "perturbation": pert_rel}, subject.x.dtype, tol


def audit(
    model: nn.Module,
    inputs: Tensor,
    *,
    causal: bool = True,
    modes: Sequence[str] = MODES,
    key_padding_mask: Optional[Tensor] = None,
    mask_arg: Optional[str] = "key_padding_mask",
    tol: Optional[float] = None,
    seed: int = 0,
    max_rows: Optional[int] = None,
    max_columns: int = 16,
    chunk_size: int = 16,
    output_fn: Optional[Callable[[Any], Tensor]] = None,
) -> AuditReport:
    """Measure future, cross-batch and padding leakage of ``model`` at ``inputs`` (see the module docstring).

    Args:
        model: any nn.Module mapping [B, N, C] (or token ids [B, N]) to [B, N, ...]; its parameters, buffers
            and train/eval flags are left as they were.
        inputs: a floating [B, N, C] tensor, or integer token ids [B, N] (then x is the token embedding).
        causal: check future leakage (output t must not depend on input s > t).
        modes: any of ``"train"``, ``"eval"``.
        key_padding_mask: bool [B, N], True at PAD positions; passed to the model as ``mask_arg=...``
            (``mask_arg=None``: not passed) and enables the padding check.
        tol: relative dependence counted as leakage; default :func:`default_tol` of the input (embedding) dtype.
        seed: seeds u, the fresh values and the RNG before every forward pass (dropout masks).
        max_rows: how many output positions get a Jacobian row, spread evenly; default all of them when
            ``causal`` (the future check needs every row to be exhaustive), else 16 (for the heatmap only).
        max_columns: how many input positions are perturbed one at a time, spread evenly (plus, when causal,
            every position autograd found leaking into the past).
        chunk_size: cotangents per batched backward pass (memory ∝ chunk_size · B · N · C).
        output_fn: picks the [B, N, ...] tensor out of the model's output (default: out, out[0] or out.logits).

    Returns:
        An :class:`AuditReport`; ``report.leaks`` is True when any check found leakage in any mode.
    """
    if inputs.dim() != (2 if not inputs.is_floating_point() else 3):
        want = "[B, N, C] (floating)" if inputs.is_floating_point() else "[B, N] (token ids)"
        raise ValueError(f"expected inputs of shape {want}, but got inputs of size {list(inputs.shape)}")
    if inputs.is_complex() or inputs.dtype == torch.bool:
        raise TypeError(f"inputs must be floating or integer token ids, but got dtype {inputs.dtype}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, but got modes={list(modes)}")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                         or tuple(key_padding_mask.shape) != tuple(inputs.shape[:2])):
        raise ValueError(
            f"key_padding_mask must be bool of shape [B, N] = {list(inputs.shape[:2])}, but got "
            f"{key_padding_mask.dtype} of size {list(key_padding_mask.shape)}"
        )
    if max_columns < 1 or chunk_size < 1 or (max_rows is not None and max_rows < 1):
        raise ValueError(f"max_rows, max_columns and chunk_size must be ≥ 1, but got {max_rows}, {max_columns}, "
                         f"{chunk_size}")
    start = time.perf_counter()
    kwargs = {} if key_padding_mask is None or mask_arg is None else {mask_arg: key_padding_mask}
    cfg = _Config(causal, key_padding_mask, kwargs, tol, seed, max_rows, max_columns, chunk_size, output_fn)
    findings: list[Finding] = []
    matrices: dict[str, dict[str, Tensor]] = {}
    for mode in modes:
        found, matrices[mode], dtype, used_tol = _audit_mode(model, inputs, mode, cfg)
        findings += found
    skipped = {}
    if not causal:
        skipped["future"] = "model audited as non-causal"
    if inputs.shape[0] < 2:
        skipped["cross_batch"] = "batch of one item"
    if key_padding_mask is None or not key_padding_mask.any() or key_padding_mask.all():
        skipped["padding"] = "no key_padding_mask with both PAD and non-PAD positions"
    return AuditReport(findings, matrices, tuple(inputs.shape), dtype, not inputs.is_floating_point(), causal,
                       used_tol, skipped, time.perf_counter() - start, type(model).__name__)
