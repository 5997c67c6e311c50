"""``tokennorm demo``: train a tiny character-level causal LM on *King Lear* once per norm choice and placement.

Every configuration starts from the same seed and sees the same batches in the same order, so the curves differ
only by the norm (``layernorm``, ``rmsnorm``, ``batchnorm``, ``none``) and its placement (``post``: the original
Transformer, ``pre``: GPT-2). Writes ``loss_curves.png`` and ``results.json`` to ``--out`` and prints a table of
the final losses. The default model (64 wide, 2 layers, 300 steps of 32×64 characters, four configurations)
runs on two CPU cores in about two minutes; ``--device cuda`` trains under bf16 autocast.

Train and validation losses in the table and the right-hand plot are measured in eval mode on fixed batches
(the first 90% of the text trains, the last 10% validates). ``batchnorm`` therefore reports its loss with
running statistics: in training mode its batch statistics mix every position, the future included, which makes
its training-mode loss look better than any causal model can actually achieve.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

HELP = "Train a tiny causal LM on King Lear, comparing norm choices and placements; loss curves as PNG."

DEFAULT_CONFIGS = ("layernorm-post", "layernorm-pre", "rmsnorm-post", "rmsnorm-pre")
CORPUS = "king_lear.txt"


# ----------------------------------------------------------------------------------------------------- data


def load_corpus() -> str:
    """The bundled text (``tokennorm/data/king_lear.txt``, public domain; see the README beside it)."""
    return resources.files("tokennorm").joinpath("data", CORPUS).read_text(encoding="utf-8")


@dataclass
class CharData:
    """Character-level tokens of a text, split into a leading train part and a trailing validation part."""

    vocab: list[str]
    train: Tensor
    val: Tensor

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> "CharData":
        vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        split = int(len(ids) * (1.0 - val_fraction))
        return cls(vocab, ids[:split], ids[split:])

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())


def sample_batch(data: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: inputs ``[B, N]`` and next-character targets ``[B, N]``."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len + 1} characters, but the split has {len(data)}")
    starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
    window = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[window]
    return chunk[:, :-1], chunk[:, 1:]


# -------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RunConfig:
    norm: str
    placement: str

    @property
    def name(self) -> str:
        return f"{self.norm}-{self.placement}"


def parse_configs(text: str) -> tuple[RunConfig, ...]:
    """``"layernorm-post,rmsnorm-pre"`` -> configs; argparse error naming the bad entry."""
    from tokennorm.transformer.norms import NORM_TYPES, PLACEMENTS

    configs = []
    for item in (s.strip() for s in text.split(",")):
        norm, _, placement = item.rpartition("-")
        if norm not in NORM_TYPES or placement not in PLACEMENTS:
            raise argparse.ArgumentTypeError(
                f"bad config {item!r}: expected NORM-PLACEMENT with NORM in {', '.join(NORM_TYPES)} and "
                f"PLACEMENT in {', '.join(PLACEMENTS)}, e.g. layernorm-pre"
            )
        configs.append(RunConfig(norm, placement))
    if len(set(configs)) != len(configs):
        raise argparse.ArgumentTypeError(f"--configs lists a configuration twice: {text!r}")
    return tuple(configs)


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP
    parser.add_argument("--configs", type=parse_configs, default=parse_configs(",".join(DEFAULT_CONFIGS)),
                        help="comma-separated NORM-PLACEMENT list; NORM in layernorm, rmsnorm, batchnorm, none; "
                             f"PLACEMENT in post, pre (default: {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--steps", type=_positive(int), default=300, help="training steps per config (300)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (auto)")
    parser.add_argument("--out", default="tokennorm-demo", help="directory for loss_curves.png and results.json")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and batches (0)")
    parser.add_argument("--threads", type=_positive(int), default=1,
                        help="CPU threads (1: this model is too small to gain from more, and OpenMP threads "
                             "that wait for a busy core can make each step 10-30x slower)")
    parser.add_argument("--d-model", type=_positive(int), default=64, help="model width (64)")
    parser.add_argument("--layers", type=_positive(int), default=2, help="decoder layers (2)")
    parser.add_argument("--heads", type=_positive(int), default=4, help="attention heads (4)")
    parser.add_argument("--seq-len", type=_positive(int), default=64, help="characters per sequence (64)")
    parser.add_argument("--batch-size", type=_positive(int), default=32, help="sequences per step (32)")
    parser.add_argument("--lr", type=_positive(float), default=3e-3, help="peak AdamW learning rate (3e-3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="linear warmup steps, then cosine decay to 10%% (default: 10%% of --steps)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout everywhere (0)")
    parser.add_argument("--eval-interval", type=_positive(int), default=50, help="evaluate every N steps (50)")
    parser.add_argument("--eval-batches", type=_positive(int), default=4,
                        help="fixed batches per split in each evaluation (4)")
    parser.add_argument("--sample", type=int, default=0, metavar="CHARS",
                        help="print this many characters generated by the best configuration (0: none)")


# ------------------------------------------------------------------------------------------------- training


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
def evaluate(model, batches: list[tuple[Tensor, Tensor]], device: torch.device) -> float:
    was_training = model.training
    model.eval()
    loss = sum(_loss(model, x, y, device).item() for x, y in batches) / len(batches)
    model.train(was_training)
    return loss


def train_one(
    cfg: RunConfig, args: argparse.Namespace, data: CharData, eval_sets: dict, device: torch.device,
    progress, task,
) -> tuple[ConfigResult, torch.nn.Module]:
    from tokennorm.transformer import CausalLM

    torch.manual_seed(args.seed)  # the same initial weights wherever the configs have the same parameters
    model = CausalLM(
        len(data.vocab), d_model=args.d_model, nhead=args.heads, num_layers=args.layers, max_len=args.seq_len,
        dropout=args.dropout, norm=cfg.norm, placement=cfg.placement, device=device,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    batches = torch.Generator().manual_seed(args.seed + 1)  # the same batch sequence for every config
    warmup = max(1, args.steps // 10 if args.warmup is None else args.warmup)
    result = ConfigResult(cfg.name, cfg.norm, cfg.placement, sum(p.numel() for p in model.parameters()))

    def record_eval(step: int) -> None:
        result.eval_steps.append(step)
        result.eval_train.append(evaluate(model, eval_sets["train"], device))
        result.eval_val.append(evaluate(model, eval_sets["val"], device))

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


# -------------------------------------------------------------------------------------------------- outputs


def write_plot(path: Path, results: list[ConfigResult], title: str) -> None:
    """Two panels: smoothed training-mode minibatch loss per step; eval-mode validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = {"layernorm": "tab:blue", "rmsnorm": "tab:orange", "batchnorm": "tab:red", "none": "tab:gray"}
    for r in results:
        style = dict(color=colors.get(r.norm), linestyle="-" if r.placement == "pre" else "--", label=r.name)
        smoothed, ema = [], None
        for v in r.train_loss:  # exponential moving average: minibatch losses are noisy
            ema = v if ema is None or not math.isfinite(ema) else 0.9 * ema + 0.1 * v
            smoothed.append(ema)
        ax_train.plot(r.steps, smoothed, **style)
        ax_val.plot(r.eval_steps, r.eval_val, marker=".", **style)
    ax_train.set(title="training loss (minibatch, EMA 0.9)", xlabel="step", ylabel="cross-entropy (nats/char)")
    ax_val.set(title="validation loss (eval mode)", xlabel="step", ylabel="cross-entropy (nats/char)")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_table(results: list[ConfigResult], title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("config", "params", "train loss", "val loss", "best val", "time (s)"):
        table.add_column(col, justify="left" if col == "config" else "right")
    best = min((r.final_val for r in results if math.isfinite(r.final_val)), default=math.nan)
    for r in results:
        val = f"{r.final_val:.4f}"
        if r.final_val == best:
            val = f"[bold green]{val}[/]"
        if r.diverged_at is not None:
            val = f"[red]diverged at step {r.diverged_at}[/]"
        table.add_row(r.name, f"{r.parameters:,}", f"{r.final_train:.4f}", val, f"{min(r.eval_val):.4f}",
                      f"{r.seconds:.1f}")
    return table


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        console.print(f"[red]tokennorm demo: {exc}[/]")
        return 2
    if args.d_model % args.heads or args.d_model % 2:
        console.print(f"[red]tokennorm demo: --d-model must be even and divisible by --heads, but got "
                      f"--d-model {args.d_model} and --heads {args.heads}[/]")
        return 2
    if not 0.0 <= args.dropout < 1.0:
        console.print(f"[red]tokennorm demo: --dropout must be in [0, 1), but got --dropout {args.dropout}[/]")
        return 2
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        return _train_and_report(args, device, console)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests): leave the setting as found


def _train_and_report(args: argparse.Namespace, device: torch.device, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = CharData.from_text(load_corpus())
    eval_gen = torch.Generator().manual_seed(args.seed + 2)
    eval_sets = {
        split: [tuple(t.to(device) for t in sample_batch(tokens, args.batch_size, args.seq_len, eval_gen))
                for _ in range(args.eval_batches)]
        for split, tokens in (("train", data.train), ("val", data.val))
    }
    setup = (f"d_model={args.d_model}, layers={args.layers}, heads={args.heads}, seq_len={args.seq_len}, "
             f"batch={args.batch_size}, steps={args.steps}, lr={args.lr}, device={device}"
             f"{' (bf16 autocast)' if device.type == 'cuda' else ''}, seed={args.seed}")
    console.print(f"King Lear: {len(data.train):,} train / {len(data.val):,} val characters, "
                  f"vocabulary {len(data.vocab)}\n{setup}")

    results: list[ConfigResult] = []
    models = {}
    columns = (TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[loss]}"))
    with Progress(*columns, console=console) as progress:
        tasks = {cfg: progress.add_task(cfg.name, total=args.steps, loss="", start=False) for cfg in args.configs}
        for cfg in args.configs:
            progress.start_task(tasks[cfg])
            result, model = train_one(cfg, args, data, eval_sets, device, progress, tasks[cfg])
            results.append(result)
            models[cfg.name] = model

    title = f"tokennorm demo: char-level causal LM on King Lear ({setup})"
    plot_path, json_path = out / "loss_curves.png", out / "results.json"
    write_plot(plot_path, results, title)
    payload = {"setup": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "configs"},
               "configs": [c.name for c in args.configs], "device": str(device), "vocab_size": len(data.vocab),
               "results": [asdict(r) | {"final_train": r.final_train, "final_val": r.final_val} for r in results]}
    json_path.write_text(json.dumps(payload, indent=1, default=str))

    console.print(results_table(results, "final loss (eval mode, nats/char; ln 65 = 4.17 is chance)"))
    console.print(f"loss curves: {plot_path}\nresults: {json_path}")
    if any(r.norm == "batchnorm" for r in results):
        console.print("[yellow]batchnorm: its training-mode statistics pool every position, the future included; "
                      "the eval-mode losses above use running statistics.[/]")
    finite = [r for r in results if math.isfinite(r.final_val)]
    if args.sample > 0 and finite:
        best = min(finite, key=lambda r: r.final_val)
        text = generate(models[best.name], data, "\n", args.sample, device, args.seed)
        console.print(f"\nsample from {best.name}:\n{text}", markup=False, highlight=False)
    return 0
