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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tokennorm.tools.demo.train import RunConfig

DEFAULT_CONFIGS = ("layernorm-post", "layernorm-pre", "rmsnorm-post", "rmsnorm-pre")


def parse_configs(text: str) -> tuple[RunConfig, ...]:
    """``"layernorm-post,rmsnorm-pre"`` -> configs; argparse error naming the bad entry."""
    from tokennorm.tools.demo.train import RunConfig
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
    # No parsed default: the check of config names imports the model code (and torch), which a mistyped
    # option elsewhere should not wait for.
    parser.add_argument("--configs", type=parse_configs, default=None,
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


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.tools.demo.train import resolve_device

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
        return _train_and_report(args, args.configs or parse_configs(",".join(DEFAULT_CONFIGS)), device, console)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests): leave the setting as found


def _train_and_report(
    args: argparse.Namespace, configs: tuple[RunConfig, ...], device: torch.device, console
) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from tokennorm.tools.demo.data import CharData, load_corpus, sample_batch
    from tokennorm.tools.demo.report import results_table, write_plot
    from tokennorm.tools.demo.train import ConfigResult, generate, train_one

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
        tasks = {cfg: progress.add_task(cfg.name, total=args.steps, loss="", start=False) for cfg in configs}
        for cfg in configs:
            progress.start_task(tasks[cfg])
            result, model = train_one(cfg, args, data, eval_sets, device, progress, tasks[cfg])
            results.append(result)
            models[cfg.name] = model

    title = f"tokennorm demo: char-level causal LM on King Lear ({setup})"
    plot_path, json_path = out / "loss_curves.png", out / "results.json"
    write_plot(plot_path, results, title)
    payload = {"setup": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "configs"},
               "configs": [c.name for c in configs], "device": str(device), "vocab_size": len(data.vocab),
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
