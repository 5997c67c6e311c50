"""Training one demo configuration: a ``tokennorm.transformer.CausalLM`` with one norm and placement.

Every configuration starts from the same seed and sees the same batches in the same order, so runs differ only by
the norm and its placement. Losses for comparison are measured on fixed batches in eval mode (what inference
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

from tokennorm.tools.demo.data import CharData, sample_batch


@dataclass(frozen=True)
class RunConfig:
    """One run: a norm of :data:`tokennorm.tools.demo.models.DEMO_NORMS` at a placement (``post``/``pre``)."""

    norm: str
    placement: str

    @property
    def name(self) -> str:
        return f"{self.norm}-{self.placement}"


@dataclass
class ConfigResult:
    name: str
    norm: str
    placement: str
    parameters: int
    steps: list[int] = field(default_factory=list)  # training step of each train_loss entry
    train_loss: list[float] = field(default_factory=list)  # minibatch loss per step (training mode)
    eval_steps: list[int] = field(default_factory=list)
    eval_train: list[float] = field(default_factory=list)  # eval-mode loss on fixed train batches
    eval_val: list[float] = field(default_factory=list)  # eval-mode loss on fixed validation batches
    eval_val_train_mode: list[float] = field(default_factory=list)  # the same batches, model in training mode
    seconds: float = 0.0
    diverged_at: Optional[int] = None

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


def _loss(model, x: Tensor, y: Tensor, device: torch.device) -> Tensor:
    with _autocast(device):
        logits = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model, batches: list[tuple[Tensor, Tensor]], device: torch.device, train_mode: bool = False) -> float:
    """Mean loss over ``batches`` in eval mode, or in training mode (batch statistics, dropout) with the model's
    buffers (BatchNorm's running statistics) and the global RNG left as they were."""
    was_training = model.training
    buffers = [b.clone() for b in model.buffers()] if train_mode else []
    model.train(train_mode)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss = sum(_loss(model, x, y, device).item() for x, y in batches) / len(batches)
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    model.train(was_training)
    return loss


def train_one(
    cfg: RunConfig,
    args: argparse.Namespace,
    data: CharData,
    eval_sets: dict,
    device: torch.device,
    progress,
    task,
) -> tuple[ConfigResult, torch.nn.Module]:
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
        device=device,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    batches = torch.Generator().manual_seed(args.seed + 1)  # the same batch sequence for every config
    warmup = max(1, args.steps // 10 if args.warmup is None else args.warmup)
    result = ConfigResult(cfg.name, cfg.norm, cfg.placement, sum(p.numel() for p in model.parameters()))

    def record_eval(step: int) -> None:
        result.eval_steps.append(step)
        result.eval_train.append(evaluate(model, eval_sets["train"], device))
        result.eval_val.append(evaluate(model, eval_sets["val"], device))
        result.eval_val_train_mode.append(evaluate(model, eval_sets["val"], device, train_mode=True))

    start = time.perf_counter()
    model.train()
    record_eval(0)
    for step in range(args.steps):
        x, y = sample_batch(data.train, args.batch_size, args.seq_len, batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, warmup, args.lr)
        loss = _loss(model, x, y, device)
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
