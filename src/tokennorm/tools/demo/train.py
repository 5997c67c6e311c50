"""Training one demo configuration: a ``tokennorm.transformer.CausalLM`` with one norm and placement.

Every configuration starts from the same seed and sees the same batches in the same order, so runs differ only by
the norm, its placement and, in class-conditional runs (``--classes``), whether the model is told each sequence's
class. Losses for comparison are measured on fixed batches in eval mode (what inference
computes) and, beside it, in training mode (what the training loop sees: BatchNorm with batch statistics).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tokennorm.tools.demo.data import CharData, ClassedData, sample_batch

# How a run uses the per-sequence class of a class-conditional run: "" (not at all: the plain model),
# "adaln" (AdaLN-Zero blocks conditioned on the class's embedding), "adaln-null" (the same model, but every
# sequence gets class 0: the architecture without the information)
CONDITIONS = ("", "adaln", "adaln-null")


@dataclass(frozen=True)
class RunConfig:
    """One run: a norm of :data:`tokennorm.tools.demo.models.DEMO_NORMS` at a placement (``post``/``pre``), and
    how it is conditioned on the sequence's class (:data:`CONDITIONS`)."""

    norm: str
    placement: str
    condition: str = ""

    @property
    def name(self) -> str:
        return f"{self.norm}-{self.placement}" + (f"+{self.condition}" if self.condition else "")

    def classes(self, classes: Optional[Tensor]) -> Optional[Tensor]:
        """What the model is given as ``classes=`` for a batch of this class-conditional run's classes."""
        if not self.condition or classes is None:
            return None
        return classes if self.condition == "adaln" else torch.zeros_like(classes)


@dataclass
class ConfigResult:
    name: str
    norm: str
    placement: str
    parameters: int
    condition: str = ""
    steps: list[int] = field(default_factory=list)  # training step of each train_loss entry
    train_loss: list[float] = field(default_factory=list)  # minibatch loss per step (training mode)
    eval_steps: list[int] = field(default_factory=list)
    eval_train: list[float] = field(default_factory=list)  # eval-mode loss on fixed train batches
    eval_val: list[float] = field(default_factory=list)  # eval-mode loss on fixed validation batches
    eval_val_train_mode: list[float] = field(default_factory=list)  # the same batches, model in training mode
    seconds: float = 0.0
    diverged_at: Optional[int] = None
    val_by_position: list[float] = field(default_factory=list)  # final eval-mode validation loss per position

    @property
    def final_train(self) -> float:
        return self.eval_train[-1] if self.eval_train else math.nan

    @property
    def final_val(self) -> float:
        return self.eval_val[-1] if self.eval_val else math.nan


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ValueError for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, but got --device {name}")
    return device


def lr_at(step: int, steps: int, warmup: int, peak: float) -> float:
    """Linear warmup from peak/warmup to peak, then cosine decay to 10% of peak at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _autocast(device: torch.device):
    # bf16 autocast on the GPU (matmuls and attention in bf16, norms and the loss in fp32); fp32 on the CPU
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# a batch: inputs [B, N], next-character targets [B, N], and the sequences' classes [B] (None or absent: none)
Batch = tuple[Tensor, Tensor, Optional[Tensor]]


def _classes(rest: list) -> Optional[Tensor]:
    """The classes of a batch given as (x, y) or (x, y, classes)."""
    return rest[0] if rest else None


def _loss(model, x: Tensor, y: Tensor, device: torch.device, classes: Optional[Tensor] = None, reduction="mean"):
    with _autocast(device):
        logits = model(x) if classes is None else model(x, classes=classes)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction=reduction)


@torch.no_grad()
def evaluate(
    model, batches: list[Batch], device: torch.device, train_mode: bool = False, cfg: Optional[RunConfig] = None
) -> float:
    """Mean loss over ``batches`` in eval mode, or in training mode (batch statistics, dropout) with the model's
    buffers (BatchNorm's running statistics) and the global RNG left as they were; classes as ``cfg`` uses them."""
    was_training = model.training
    buffers = [b.clone() for b in model.buffers()] if train_mode else []
    model.train(train_mode)
    cfg = cfg or RunConfig("", "")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss = sum(_loss(model, x, y, device, cfg.classes(_classes(b))).item() for x, y, *b in batches)
    loss /= len(batches)
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    model.train(was_training)
    return loss


@torch.no_grad()
def loss_by_position(model, batches: list[Batch], device: torch.device, cfg: RunConfig) -> list[float]:
    """Eval-mode loss at each position of the sequences, averaged over ``batches``."""
    was_training = model.training
    model.eval()
    total = sum(
        _loss(model, x, y, device, cfg.classes(c), reduction="none").view(x.shape).mean(0).cpu() for x, y, c in batches
    )
    model.train(was_training)
    return (total / len(batches)).tolist()


def train_one(
    cfg: RunConfig,
    args: argparse.Namespace,
    data: CharData,
    eval_sets: dict[str, list[Batch]],
    device: torch.device,
    progress,
    task,
    classed: Optional[ClassedData] = None,
) -> tuple[ConfigResult, torch.nn.Module]:
    """Train ``cfg`` for ``args.steps`` steps on ``data`` (or, class-conditional, on ``classed``'s streams, the
    class given to the model as ``cfg`` says); evaluate on ``eval_sets``. Returns the result and the model."""
    from tokennorm.tools.demo.data import sample_classed_batch
    from tokennorm.tools.demo.models import build_model

    torch.manual_seed(args.seed)  # the same initial weights wherever the configs have the same parameters
    model = build_model(
        cfg.norm,
        cfg.placement,
        len(data.vocab),
        d_model=args.d_model,
        nhead=args.heads,
        num_layers=args.layers,
        max_len=args.seq_len,
        dropout=args.dropout,
        num_classes=len(classed.classes) if cfg.condition and classed is not None else None,
        device=device,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    batches = torch.Generator().manual_seed(args.seed + 1)  # the same batch sequence for every config
    warmup = max(1, args.steps // 10 if args.warmup is None else args.warmup)
    parameters = sum(p.numel() for p in model.parameters())
    result = ConfigResult(cfg.name, cfg.norm, cfg.placement, parameters, cfg.condition)

    def record_eval(step: int) -> None:
        result.eval_steps.append(step)
        result.eval_train.append(evaluate(model, eval_sets["train"], device, cfg=cfg))
        result.eval_val.append(evaluate(model, eval_sets["val"], device, cfg=cfg))
        result.eval_val_train_mode.append(evaluate(model, eval_sets["val"], device, train_mode=True, cfg=cfg))

    start = time.perf_counter()
    model.train()
    record_eval(0)
    for step in range(args.steps):
        if classed is None:
            (x, y), classes = sample_batch(data.train, args.batch_size, args.seq_len, batches), None
        else:
            x, y, classes = sample_classed_batch(classed.train, args.batch_size, args.seq_len, batches)
            classes = cfg.classes(classes.to(device))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, warmup, args.lr)
        loss = _loss(model, x, y, device, classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        result.steps.append(step + 1)
        result.train_loss.append(value)
        if not math.isfinite(value):
            result.diverged_at = step + 1  # stop this config; the others still run
            progress.update(task, completed=args.steps, loss=f"diverged at step {step + 1}")
            break
        if (step + 1) % args.eval_interval == 0 or step + 1 == args.steps:
            record_eval(step + 1)
        progress.update(task, advance=1, loss=f"loss {value:.3f}  val {result.eval_val[-1]:.3f}")
    if result.diverged_at is None:
        result.val_by_position = loss_by_position(model, eval_sets["val"], device, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result, model


@torch.no_grad()
def generate(model, data: CharData, prompt: str, length: int, device: torch.device, seed: int) -> str:
    """Sample ``length`` characters after ``prompt`` (temperature 1), within the model's context length."""
    model.eval()
    index = {ch: i for i, ch in enumerate(data.vocab)}
    ids = torch.tensor([[index[c] for c in prompt if c in index] or [0]], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    max_len = model.positions.max_len
    for _ in range(length):
        with _autocast(device):
            logits = model(ids[:, -max_len:])[:, -1].float()
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        ids = torch.cat([ids, nxt], dim=1)
    return data.decode(ids[0].cpu())
