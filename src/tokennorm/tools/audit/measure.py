"""Does a model's output at one token depend on tokens it must not see? Measured, not assumed.

The claim under test: LayerNorm's statistics are per token, so a causal decoder cannot learn the
future through it and padding cannot disturb real tokens, while BatchNorm mixes tokens, batch items and PAD.
:func:`audit` checks this on any model, for four kinds of leakage:

* ``future``: output position t depends on an input position s > t (checked for causal models);
* ``cross_batch``: batch item i depends on another item j ≠ i;
* ``padding``: a non-PAD output depends on a PAD input (positions marked True in the key-padding mask);
* ``condition``: batch item i depends on another item j's condition (a per-item input such as AdaLN's c or a
  class id, given with ``condition=``: each item its own), checked like ``cross_batch`` with the condition in
  place of the tokens (for class ids, on their embedding).

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

**Which module.** Forward hooks on every module keep each output shaped [B, N, ...] (and, with a condition,
[B, ...]) and each call's inputs during the perturbation passes, and the same measurement is made on each; the
first module in execution order whose output shows the forbidden dependence while its inputs do not is where the
leak enters (its parents and everything downstream show it too). Perturbation,
not autograd, because one forward pass measures every module at once, where autograd would need a backward pass
per module and row.

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

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from tokennorm.tools.audit.report import MAX_WHERE, MODES, AuditReport, ConditionInfo, Finding, Measurement, ModuleLeak
from tokennorm.tools.audit.subject import Condition, as_output, in_mode, make_condition, make_subject, seeded

# progress(done, total, stage): called after every forward or backward pass of an audit
Progress = Callable[[int, int, str], None]


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
    """Largest ``rel`` where ``leak`` is True; pinpoints are the (dim 0, dim 1) indices of a 2-D ``rel``;
    ``checked`` counts the measured (non-NaN) entries where ``leak`` is True."""
    measured = leak & ~torch.isnan(rel)
    vals = torch.where(measured, rel, torch.zeros_like(rel))
    above = (vals > tol).nonzero().tolist()
    order = sorted(above, key=lambda ij: -vals[ij[0], ij[1]].item())
    return Measurement(
        method,
        vals.max().item() if vals.numel() else 0.0,
        len(above),
        [(int(i), int(j)) for i, j in order[:MAX_WHERE]],
        int(measured.sum()),
    )


def _moved(new: Tensor, base: Tensor) -> Tensor:
    """[B, N]: how far each output token moved (norm over features); NaN before and after is no move, a NaN
    that appeared or disappeared is infinite (see :func:`_vjp_norms`)."""
    same = (new == base) | (new.isnan() & base.isnan())
    delta = torch.where(same, 0.0, (new - base).double())
    return torch.linalg.vector_norm(delta, dim=-1).nan_to_num(nan=math.inf)


def _tensors(out: Any) -> list[Any]:
    """The leaves of a module output: the tensor itself, or the elements of (nested) tuples and lists."""
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _tensors(item)]
    return [out]


class _ModuleOutputs:
    """Forward hooks on every module of a model (the model itself included) that keep, during
    :meth:`recording`, each output shaped [B, N, ...] in the order the modules finish: the per-module view of
    the perturbation passes. A tuple output counts element by element (``name[i]``, nested tuples flattened); a
    module called twice appears twice (``name (call 2)``). With ``items``, outputs with one value per batch item
    ([B, ...] but not [B, N, ...]: AdaLN's shift, scale and gate) are kept too, as [B, 1, ...].

    Each call's tensor inputs (positional and keyword) are kept the same way, under ``inputs[output key]``: a
    module whose output shows a leak its inputs do not show is where the leak enters (see :func:`_first_leaking`).
    """

    def __init__(self, model: nn.Module, batch: int, length: int, items: bool = False) -> None:
        self.batch, self.length, self.items = batch, length, items
        self.outputs: Optional[dict[str, Tensor]] = None
        self.types: dict[str, str] = {}
        self.inputs: dict[str, list[str]] = {}  # output key -> keys of that call's inputs (also in outputs)
        self.handles = [
            module.register_forward_hook(self._hook(name or "<model>"), with_kwargs=True)
            for name, module in model.named_modules()
        ]

    def _keep(self, t: Any) -> Optional[Tensor]:
        """``t`` as [B, N, F] (or [B, 1, F] per item, with ``items``); None when it is not per token or item."""
        if not (isinstance(t, Tensor) and t.is_floating_point() and t.dim() >= 1 and t.shape[0] == self.batch):
            return None
        per_token = t.dim() >= 2 and t.shape[1] == self.length
        if not (per_token or self.items):
            return None
        return t.detach().reshape(self.batch, self.length if per_token else 1, -1).clone()

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
            if self.outputs is None:
                return
            leaves = _tensors(out)
            inputs = [t for t in map(self._keep, _tensors(list(args) + list(kwargs.values()))) if t is not None]
            for i, t in enumerate(map(self._keep, leaves)):
                if t is None:
                    continue
                key = name if len(leaves) == 1 else f"{name}[{i}]"
                unique, call = key, 2
                while unique in self.outputs:
                    unique, call = f"{key} (call {call})", call + 1
                self.outputs[unique] = t
                self.types[unique] = type(module).__name__
                self.inputs[unique] = [f"{unique} <input {j}>" for j in range(len(inputs))]
                self.outputs.update(zip(self.inputs[unique], inputs))

        return record

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, Tensor]]:
        self.outputs = {}
        try:
            yield self.outputs
        finally:
            self.outputs = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _first_leaking(measurements: dict[str, Measurement], recorder: _ModuleOutputs, tol: float) -> list[ModuleLeak]:
    """The modules whose output shows the forbidden dependence, strongest measurement each, in execution order,
    except that the first is where the leak enters: the first module whose output shows it while none of its
    inputs do (a leaf like a BatchNorm, or a module that mixes before calling its children: its Linear's input
    already shows it), else the first module whose output shows it."""

    def leaks(key: str) -> bool:
        return key in measurements and measurements[key].magnitude > tol

    names = [k for k in measurements if k in recorder.types and leaks(k)]
    entry = next((k for k in names if not any(leaks(i) for i in recorder.inputs.get(k, ()))), None)
    if entry is not None:
        names = [entry] + [k for k in names if k != entry]
    return [
        ModuleLeak(k, recorder.types[k], measurements[k].magnitude, (measurements[k].where or [None])[0]) for k in names
    ]


def _vjp_norms(
    out: Tensor,
    x: Tensor,
    u: Tensor,
    masks: Tensor,
    chunk_size: int,
    on_chunk: Callable[[int], None],
    per_item: bool = False,
) -> Tensor:
    """‖(u·mask_k)ᵀ ∂out/∂x‖ over channels for every mask: [K, B, N] from masks [K, B, N]; with ``per_item``
    (x a condition [B, ...]), over everything but the item: [K, B]. No path from out to x gives zeros."""
    norms = []
    for start in range(0, masks.shape[0], chunk_size):
        cot = u * masks[start : start + chunk_size, :, :, None]  # [k, B, N, F]
        (g,) = torch.autograd.grad(
            out, x, cot, retain_graph=True, is_grads_batched=True, allow_unused=True, materialize_grads=True
        )  # [k, *x.shape]
        norms.append(torch.linalg.vector_norm((g.flatten(2) if per_item else g).double(), dim=-1))
        on_chunk(1)
    # NaN marks "not measured" in the matrices, so a NaN gradient becomes +inf: infinite leakage, not silence
    return torch.cat(norms).nan_to_num(nan=math.inf)


def _spread(n: int, k: int) -> list[int]:
    """k positions spread evenly over range(n), ends included (all of them when k ≥ n)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


class _ModeResult(NamedTuple):
    """What one mode's audit found."""

    findings: list[Finding]
    matrices: dict[str, Tensor]
    dtype: torch.dtype
    tol: float
    own_condition: Optional[float]  # weakest item's dependence on its own condition (None: no condition)
    nonfinite: int  # output positions [B, N] with a NaN or inf output in the unperturbed pass


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
    progress: Optional[Progress]
    modules: bool
    condition: Optional[tuple[str, Tensor]]  # (keyword, value [B, ...]): one condition per item


def _audit_mode(model: nn.Module, inputs: Tensor, mode: str, cfg: _Config) -> _ModeResult:
    batch, length = inputs.shape[:2]
    gen = torch.Generator().manual_seed(cfg.seed)
    done, total = [0], [0]

    def step(stage: str, count: int = 1) -> None:
        done[0] += count
        if cfg.progress is not None:
            cfg.progress(done[0], total[0], f"{mode}: {stage}")

    recorder = _ModuleOutputs(model, batch, length, cfg.condition is not None) if cfg.modules else None
    try:
        with in_mode(model, mode == "train"):
            return _audit_mode_inner(model, inputs, mode, cfg, gen, recorder, step, total)
    finally:
        if recorder is not None:
            recorder.remove()


def _audit_mode_inner(
    model: nn.Module,
    inputs: Tensor,
    mode: str,
    cfg: _Config,
    gen: torch.Generator,
    recorder: Optional[_ModuleOutputs],
    step: Callable[..., None],
    total: list[int],
) -> _ModeResult:
    batch, length = inputs.shape[:2]
    device = inputs.device
    kwargs = cfg.kwargs if cfg.condition is None else {**cfg.kwargs, cfg.condition[0]: cfg.condition[1]}
    subject = make_subject(model, inputs, kwargs, cfg.seed, gen)
    cond: Optional[Condition] = None
    if cfg.condition is not None:
        with seeded(cfg.seed, device):
            cond = make_condition(model, *cfg.condition, lambda extra: subject.run(subject.x, **extra), gen)
    tol = default_tol(subject.x.dtype) if cfg.tol is None else cfg.tol
    recording = recorder.recording if recorder is not None else contextlib.nullcontext

    def forward(z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """The model's output [B, N, F] for x = z and, when conditioned, condition c (default: the given one)."""
        given = cond.given(cond.c if c is None else c) if cond is not None else contextlib.nullcontext({})
        with seeded(cfg.seed, device), given as extra:
            return as_output(subject.run(z, **extra), batch, length, cfg.output_fn)

    # Autograd: one cotangent mask per matrix row, per batch item, and for all non-PAD outputs.
    n_rows = cfg.max_rows if cfg.max_rows is not None else (length if cfg.causal else 16)
    rows = _spread(length, n_rows)
    eye_n = torch.eye(length, dtype=torch.bool, device=device)
    eye_b = torch.eye(batch, dtype=torch.bool, device=device)
    masks = [eye_n[rows][:, None, :].expand(-1, batch, -1), eye_b[:, :, None].expand(-1, -1, length)]
    has_pad = cfg.pad is not None and bool(cfg.pad.any()) and not bool(cfg.pad.all())
    if has_pad:
        masks.append((~cfg.pad)[None])
    n_masks = sum(m.shape[0] for m in masks)
    columns = set(_spread(length, cfg.max_columns))
    # passes: forward with graph, one backward per chunk of masks, the base forward, one per perturbation
    conditioned = cond is not None and batch > 1
    total[0] = 2 + -(-n_masks // cfg.chunk_size) + len(columns) + (batch if batch > 1 else 0) + int(has_pad)
    total[0] += (-(-batch // cfg.chunk_size) + batch) if conditioned else 0

    x = subject.x.detach().requires_grad_(True)
    c = cond.c.detach().requires_grad_(True) if conditioned else None
    out = forward(x, c)
    step("forward")
    with torch.no_grad(), recording() as base_modules:
        base = forward(subject.x)
    base_modules = dict(base_modules or {})
    nonfinite = int((~torch.isfinite(base)).any(dim=-1).sum())  # perturbation cannot see these move
    step("forward")

    def moved(where: Optional[Tensor], stage: str, c: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """How far each output token moves when ``where`` [B, N] gets new values (or, with ``c``, when the
        condition is c instead): [B, N] for the model's output, and [B, N] or [B, 1] for every recorded module
        output."""
        with torch.no_grad(), recording() as outs:
            new = forward(subject.x if where is None else subject.fresh(where), c)
        modules = {k: _moved(outs[k], v).cpu() for k, v in base_modules.items() if outs is not None and k in outs}
        step(stage)
        return _moved(new, base), modules

    u = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
    norms = _vjp_norms(out, x, u, torch.cat(masks).to(out.dtype), cfg.chunk_size, lambda k: step("autograd", k))
    row_norms, item_norms = norms[: len(rows)], norms[len(rows) : len(rows) + batch]  # [R,B,N], [B,B,N]
    if conditioned:  # item i's output on item j's condition: [i, j], by the per-item cotangents
        item_masks = eye_b[:, :, None].expand(-1, -1, length).to(out.dtype)
        cond_norms = _vjp_norms(out, c, u, item_masks, cfg.chunk_size, lambda k: step("autograd", k), per_item=True)

    grad_matrix = torch.full((length, length), math.nan, dtype=torch.float64)
    grad_matrix[rows] = torch.linalg.vector_norm(row_norms, dim=1).cpu()  # over items j
    grad_rel = _relative(grad_matrix)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)  # input s > output t

    # Perturbation: evenly spread columns plus every column autograd found leaking into the past.
    if cfg.causal:
        suspects = sorted({s for s in (grad_rel.nan_to_num(0) * future > tol).nonzero()[:, 1].tolist()})
        extra = set(suspects[: cfg.max_columns]) - columns
        columns |= extra
        total[0] += len(extra)
    pert_matrix = torch.full((length, length), math.nan, dtype=torch.float64)
    per_token = {k for k, v in base_modules.items() if v.shape[1] == length}  # the others: one value per item
    module_matrix = {  # in execution order, as base_modules
        k: torch.full((length, length), math.nan, dtype=torch.float64) for k in base_modules if k in per_token
    }
    for s in sorted(columns):
        moves, module_moves = moved(eye_n[s][None].expand(batch, -1), "perturbation")
        pert_matrix[:, s] = torch.linalg.vector_norm(moves, dim=0).cpu()
        for k, m in module_moves.items():
            if k in per_token:
                module_matrix[k][:, s] = torch.linalg.vector_norm(m, dim=0)
    pert_rel = _relative(pert_matrix)

    findings = []

    def add(check: str, autograd: Measurement, perturbation: Measurement, per_module: dict[str, Measurement]) -> None:
        f = Finding(mode, check, autograd, perturbation, tol)
        if f.leaks and recorder is not None:
            f.modules = _first_leaking(per_module, recorder, tol)
        findings.append(f)

    if cfg.causal:
        add(
            "future",
            _measure("autograd", grad_rel, future, tol),
            _measure("perturbation", pert_rel, future, tol),
            {k: _measure("perturbation", _relative(m), future, tol) for k, m in module_matrix.items()},
        )
    other = ~eye_b.cpu()
    if batch > 1:
        item_rel = _relative(item_norms.cpu())  # [i, j, s]
        per_item = [moved(eye_b[j][:, None].expand(-1, length), "perturbation") for j in range(batch)]
        pert_items = _relative(torch.stack([m.cpu() for m, _ in per_item])).amax(dim=2).T  # [j, i, t] -> [i, j]
        add(
            "cross_batch",
            _measure("autograd", item_rel.amax(dim=2), other, tol),
            _measure("perturbation", pert_items, other, tol),
            {
                k: _measure(
                    "perturbation", _relative(torch.stack([mods[k] for _, mods in per_item])).amax(dim=2).T, other, tol
                )
                for k in base_modules
                if all(k in mods for _, mods in per_item)
            },
        )
    own_condition = None
    if conditioned:
        # item j's condition replaced by another (another class's embedding, or fresh values): [j, i, t] -> [i, j]
        per_cond = [moved(None, "condition", cond.fresh(j)) for j in range(batch)]
        pert_cond = _relative(torch.stack([m.cpu() for m, _ in per_cond])).amax(dim=2).T
        cond_rel = _relative(cond_norms.cpu())  # [i, j]
        add(
            "condition",
            _measure("autograd", cond_rel, other, tol),
            _measure("perturbation", pert_cond, other, tol),
            {
                k: _measure(
                    "perturbation", _relative(torch.stack([mods[k] for _, mods in per_cond])).amax(dim=2).T, other, tol
                )
                for k in base_modules
                if all(k in mods for _, mods in per_cond)
            },
        )
        # each item on its own condition, by either method (a NaN output, e.g. a fully masked query in eval
        # mode, hides it from perturbation); 0 for some item: that item's output ignores its condition
        own_condition = torch.maximum(cond_rel.diagonal(), pert_cond.diagonal()).min().item()
    if has_pad:
        pad = cfg.pad.cpu()
        moves, module_moves = moved(cfg.pad, "perturbation")
        add(
            "padding",
            _measure("autograd", _relative(norms[-1].cpu()), pad, tol),
            _measure("perturbation", _relative(moves.cpu()), ~pad, tol),
            {k: _measure("perturbation", _relative(m), ~pad, tol) for k, m in module_moves.items() if k in per_token},
        )
    matrices = {"autograd": grad_rel, "perturbation": pert_rel}
    return _ModeResult(findings, matrices, subject.x.dtype, tol, own_condition, nonfinite)


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
    modules: bool = True,
    progress: Optional[Progress] = None,
    condition: Optional[Tensor] = None,
    condition_arg: str = "cond",
) -> AuditReport:
    r"""Measure whether ``model``'s outputs depend on inputs they must not see: future tokens, other batch
        items, PAD tokens. Returns an :class:`AuditReport`; ``report.leaks`` is the verdict.

        With x the input [B, N, C] (or the token embeddings, for token ids) and y = model(x) as [B, N, F], the
        dependence of output (i, t) on input (j, s) is measured two ways, in each mode of ``modes``:

        .. math::
            D^{	ext{autograd}}_{t,s} = ig\lVert ig(u \odot M_tig)^	op 	frac{\partial y}{\partial x}
            ig|_{s} ig
    Vert_2, \qquad
            D^{	ext{perturb}}_{t,s} = ig\lVert y_t(x 	ext{ with } x_s 	ext{ replaced}) - y_t(x) ig
    Vert_2

        (u a fixed random cotangent, M_t the mask of output row t; norms over channels and batch items), each
        divided by its largest measured value, so 1 is the strongest dependence in the model, legitimate ones
        included. A check leaks when a forbidden entry exceeds ``tol``: ``future`` (s > t, causal models),
        ``cross_batch`` (item i on item j ≠ i, B ≥ 2), ``padding`` (a non-PAD output on a PAD input),
        ``condition`` (item i on item j's ``condition``, j ≠ i, B ≥ 2). Where the
        graph has no path both measurements are exactly 0. With ``modules=True`` every module's output of shape
        [B, N, ...] is measured the same way (by perturbation, in the same passes), and each leaking finding names
        the modules whose output shows the leak, in execution order: ``finding.modules[0]`` is where it enters.

        Args:
            model: any ``nn.Module`` mapping x [B, N, C] (floating) or token ids [B, N] (int64) to [B, N, ...]
                (a tensor, a tuple whose first element is one, or an object with ``.logits``). Its parameters,
                buffers (BatchNorm's running statistics), train/eval flags, ``requires_grad`` flags and the global
                RNG are left as they were.
            inputs: floating [B, N, C] (float32 or float64 advised: bf16/fp16 roundoff hides weak leaks), or
                integer token ids [B, N]; then x is the token embedding (``model.embed`` when the model has
                ``embed``/``forward_embeddings``, else the output of the ``nn.Embedding`` applied to the ids).
            causal: check future leakage (default True: the model is taken to be a causal decoder). False for
                encoders, which may look at every position.
            modes: any non-empty subset of ``("train", "eval")`` (default both: BatchNorm and dropout differ).
            key_padding_mask: bool [B, N], True at PAD positions (default None: no padding check). Passed to the
                model as the keyword ``mask_arg``.
            mask_arg: keyword the mask is passed as (default ``"key_padding_mask"``); None: not passed.
            tol: relative dependence counted as leakage (default :func:`default_tol` of x's dtype, 128·eps).
            seed: seeds u, the replacement values and the RNG before every forward pass (same dropout masks).
            max_rows: output positions given a Jacobian row, spread evenly (default: all N when ``causal``, which
                the future check needs to be exhaustive; else 16, for the heatmap only).
            max_columns: input positions perturbed one at a time, spread evenly (default 16), plus, when causal,
                every position autograd found leaking into the past.
            chunk_size: cotangents per batched backward pass (default 16; memory ∝ chunk_size · B · N · C).
            output_fn: picks the [B, N, ...] tensor out of the model's output (default: the output, its first
                element, or ``.logits``).
            modules: attribute leaks to modules with forward hooks on every submodule (default True).
            progress: called as ``progress(done, total, stage)`` after every forward or backward pass, per mode
                (``total`` may grow once autograd has chosen extra columns to perturb).
            condition: a per-item condition [B, ...], floating (AdaLN's c) or integer ids (a class per sequence,
                which the model must look up in an ``nn.Embedding``: c is then that embedding, swapped in by a
                hook), passed to the model as the keyword ``condition_arg`` (default None: no ``condition``
                check). Give each item its own; ``report.condition.own`` says how strongly each depends on it.
            condition_arg: keyword the condition is passed as (default ``"cond"``, the blocks' keyword;
                ``CausalLM`` takes ``"classes"``).

        Returns:
            :class:`AuditReport`: ``findings`` (one :class:`Finding` per check and mode, each with an autograd and
            a perturbation :class:`Measurement`: magnitude, count of forbidden pairs above ``tol`` out of
            ``checked`` measured, pinpoints), ``matrices[mode][method]`` (the [N, N] token-to-token dependence,
            NaN where not measured), ``leaks``, ``skipped`` (checks that could not run, and why), ``condition`` (a
            :class:`ConditionInfo`, or None), ``nonfinite`` (per mode, the output positions that are NaN or inf
            without any perturbation: perturbation cannot see them move), ``to_dict()``.

        Raises:
            ValueError: ``inputs`` not [B, N, C] / [B, N], ``modes`` empty or unknown, ``key_padding_mask`` not
                bool [B, N], ``condition`` not [B, ...], a limit below 1, or a model output that is not [B, N, ...].
            TypeError: complex or bool ``inputs`` or ``condition``; token ids for a model without an embedding;
                an integer ``condition`` the model does not look up in an ``nn.Embedding``.

        Example::

            >>> from tokennorm.tools.audit import audit, demo_inputs, demo_model
            >>> tokens, pad = demo_inputs()                    # [2, 16] ids, 4 left PAD tokens in item 1
            >>> report = audit(demo_model("batchnorm"), tokens, key_padding_mask=pad)
            >>> report.leaks, report.finding("train", "future").modules[0].name
            (True, 'decoder.layers.0.norm1')
            >>> audit(demo_model("layernorm"), tokens, key_padding_mask=pad).leaks
            False
    """
    if inputs.dim() != (2 if not inputs.is_floating_point() else 3):
        want = "[B, N, C] (floating)" if inputs.is_floating_point() else "[B, N] (token ids)"
        raise ValueError(f"expected inputs of shape {want}, but got inputs of size {list(inputs.shape)}")
    if inputs.is_complex() or inputs.dtype == torch.bool:
        raise TypeError(f"inputs must be floating or integer token ids, but got dtype {inputs.dtype}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, but got modes={list(modes)}")
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != tuple(inputs.shape[:2])
    ):
        raise ValueError(
            f"key_padding_mask must be bool of shape [B, N] = {list(inputs.shape[:2])}, but got "
            f"{key_padding_mask.dtype} of size {list(key_padding_mask.shape)}"
        )
    if condition is not None and (condition.dim() < 1 or condition.shape[0] != inputs.shape[0]):
        raise ValueError(
            f"condition must have one entry per batch item, [B, ...] = [{inputs.shape[0]}, ...], but got condition "
            f"of size {list(condition.shape)}"
        )
    if condition is not None and (condition.is_complex() or condition.dtype == torch.bool):
        raise TypeError(f"condition must be floating or integer ids, but got dtype {condition.dtype}")
    if max_columns < 1 or chunk_size < 1 or (max_rows is not None and max_rows < 1):
        raise ValueError(
            f"max_rows, max_columns and chunk_size must be ≥ 1, but got {max_rows}, {max_columns}, {chunk_size}"
        )
    start = time.perf_counter()
    kwargs = {} if key_padding_mask is None or mask_arg is None else {mask_arg: key_padding_mask}
    cfg = _Config(
        causal,
        key_padding_mask,
        kwargs,
        tol,
        seed,
        max_rows,
        max_columns,
        chunk_size,
        output_fn,
        progress,
        modules,
        None if condition is None else (condition_arg, condition),
    )
    findings: list[Finding] = []
    own: dict[str, Optional[float]] = {}
    nonfinite: dict[str, int] = {}
    matrices: dict[str, dict[str, Tensor]] = {}
    for mode in modes:
        result = _audit_mode(model, inputs, mode, cfg)
        findings += result.findings
        matrices[mode], dtype, used_tol, own[mode] = result.matrices, result.dtype, result.tol, result.own_condition
        if result.nonfinite:
            nonfinite[mode] = result.nonfinite
    skipped = {}
    if not causal:
        skipped["future"] = "model audited as non-causal"
    if inputs.shape[0] < 2:
        skipped["cross_batch"] = "batch of one item"
    if key_padding_mask is None or not key_padding_mask.any() or key_padding_mask.all():
        skipped["padding"] = "no key_padding_mask with both PAD and non-PAD positions"
    if condition is not None and inputs.shape[0] < 2:
        skipped["condition"] = "batch of one item"
    conditioning = None
    if condition is not None:
        conditioning = ConditionInfo(
            condition_arg,
            tuple(condition.shape),
            str(condition.dtype).removeprefix("torch."),
            condition.flatten().tolist() if not condition.is_floating_point() and condition.numel() <= 32 else None,
            {m: v for m, v in own.items() if v is not None},
        )
    return AuditReport(
        findings,
        matrices,
        tuple(inputs.shape),
        dtype,
        not inputs.is_floating_point(),
        causal,
        used_tol,
        skipped,
        time.perf_counter() - start,
        type(model).__name__,
        conditioning,
        nonfinite,
    )
