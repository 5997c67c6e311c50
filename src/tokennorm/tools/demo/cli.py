"""``tokennorm demo``: train a tiny character-level causal LM on *King Lear* once per norm and placement.

A preset (``--preset``, :mod:`~tokennorm.tools.demo.presets`) asks one question of the articles and picks the
configurations, model and schedule that answer it on two CPU cores in about three minutes or less:

* ``depth`` (the default): post-LN against pre-LN against DyT against no norm, 8 layers at a high learning rate;
* ``conditioning``: a class-conditional model (AdaLN-Zero blocks told each sequence's class) against the same
  model given one class for all;
* ``batchnorm``: BatchNorm's training-mode loss against its eval-mode loss in a causal LM, beside LayerNorm;
* ``detach``: LayerNorm with its statistics detached from the graph (article 002's claim), LayerNorm, no norm.

Every configuration starts from the same seed and sees the same batches in the same order, so the curves differ
only by the norm (any of :data:`~tokennorm.tools.demo.models.DEMO_NORMS`), its placement (``post``: the
original Transformer, ``pre``: GPT-2) and, with ``--classes``, whether the model is told each sequence's class
(``+adaln``, or ``+adaln-null``: one class for all). Options override the preset's settings. Writes
``loss_curves.png`` and ``results.json`` to ``--out`` and prints a table of the final losses (with classes, also
the loss over each sequence's first positions and the rest); ``--device cuda`` trains under bf16 autocast.

Losses in the table and the validation plot are measured on fixed batches (the first 90% of the text trains,
the last 10% validates), in eval mode and in training mode: they differ for BatchNorm, whose training-mode
statistics mix every position, the future included.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tokennorm.tools.demo.presets import BASE, CLASS_SIGNALS, DEFAULT_PRESET, PRESETS

if TYPE_CHECKING:
    import torch

    from tokennorm.tools.demo.train import RunConfig


def parse_configs(text: str) -> tuple[RunConfig, ...]:
    """``"layernorm-post,rmsnorm-pre+adaln"`` -> configs; argparse error naming the bad entry."""
    from tokennorm.tools.demo.models import DEMO_NORMS
    from tokennorm.tools.demo.train import CONDITIONS, RunConfig
    from tokennorm.transformer.norms import PLACEMENTS

    configs = []
    for item in (s.strip() for s in text.split(",")):
        base, _, condition = item.partition("+")
        norm, _, placement = base.rpartition("-")
        if norm not in DEMO_NORMS or placement not in PLACEMENTS or condition not in CONDITIONS:
            raise argparse.ArgumentTypeError(
                f"bad config {item!r}: expected NORM-PLACEMENT[+CONDITION] with NORM in {', '.join(DEMO_NORMS)}, "
                f"PLACEMENT in {', '.join(PLACEMENTS)} and CONDITION in {', '.join(c for c in CONDITIONS if c)}, "
                "e.g. layernorm-pre or layernorm-pre+adaln"
            )
        if condition and (placement != "pre" or DEMO_NORMS[norm].base not in ("layernorm", "rmsnorm")):
            raise argparse.ArgumentTypeError(
                f"bad config {item!r}: +{condition} (AdaLN-Zero blocks) needs placement pre and norm layernorm or "
                "rmsnorm"
            )
        if condition and DEMO_NORMS[norm].transform is not None:
            raise argparse.ArgumentTypeError(f"bad config {item!r}: {norm} cannot be conditioned (+{condition})")
        configs.append(RunConfig(norm, placement, condition))
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
    presets = "; ".join(f"{p.name}: {p.question}" for p in PRESETS.values())
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=DEFAULT_PRESET,
        help=f"the question to answer (default {DEFAULT_PRESET}). {presets}",
    )
    # No parsed default: the check of config names imports the model code (and torch), which a mistyped
    # option elsewhere should not wait for.
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=None,
        help="comma-separated NORM-PLACEMENT[+CONDITION] list instead of the preset's; NORM: a norm of "
        "tokennorm.transformer (layernorm, rmsnorm, dyt, batchnorm, none) or layernorm-detached "
        "(tokennorm.tools.demo.models.DEMO_NORMS); PLACEMENT: post or pre; CONDITION (with --classes): adaln "
        "(AdaLN-Zero blocks told each sequence's class) or adaln-null (the same model, one class for all)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (auto)")
    parser.add_argument("--out", default="tokennorm-demo", help="directory for loss_curves.png and results.json")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and batches (0)")
    parser.add_argument(
        "--threads",
        type=_positive(int),
        default=1,
        help="CPU threads (1: this model is too small to gain from more, and OpenMP threads "
        "that wait for a busy core can make each step 10-30x slower)",
    )
    settings = parser.add_argument_group("training settings (default: the preset's, else the value shown)")
    settings.add_argument("--steps", type=_positive(int), help=f"training steps per config ({BASE['steps']})")
    settings.add_argument("--d-model", type=_positive(int), help=f"model width ({BASE['d_model']})")
    settings.add_argument("--layers", type=_positive(int), help=f"decoder layers ({BASE['layers']})")
    settings.add_argument("--heads", type=_positive(int), help=f"attention heads ({BASE['heads']})")
    settings.add_argument("--seq-len", type=_positive(int), help=f"characters per sequence ({BASE['seq_len']})")
    settings.add_argument("--batch-size", type=_positive(int), help=f"sequences per step ({BASE['batch_size']})")
    settings.add_argument("--lr", type=_positive(float), help=f"peak AdamW learning rate ({BASE['lr']})")
    settings.add_argument(
        "--warmup", type=int, help="linear warmup steps, then cosine decay to 10%% (default: 10%% of --steps)"
    )
    settings.add_argument("--dropout", type=float, help="dropout everywhere (0)")
    settings.add_argument(
        "--classes",
        choices=CLASS_SIGNALS,
        help="train on sequences with a class: direction (the text forwards or backwards) or speaker (which of "
        "the 8 main characters speaks); +adaln configs are told it (default: the preset's; none)",
    )
    settings.add_argument(
        "--eval-interval", type=_positive(int), help=f"evaluate every N steps ({BASE['eval_interval']})"
    )
    settings.add_argument(
        "--eval-batches",
        type=_positive(int),
        help=f"fixed batches per split in each evaluation ({BASE['eval_batches']})",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="CHARS",
        help="print this many characters generated by the best configuration (0: none)",
    )


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every training setting filled in: the option if given, else the preset's, else
    :data:`~tokennorm.tools.demo.presets.BASE`'s; the configurations likewise."""
    preset = PRESETS[args.preset]
    resolved = argparse.Namespace(**vars(args))
    resolved.changed = tuple(name for name in BASE if getattr(args, name, None) is not None) + (
        ("configs",) if args.configs is not None and [c.name for c in args.configs] != list(preset.configs) else ()
    )
    for name, default in BASE.items():
        if getattr(args, name, None) is None:
            setattr(resolved, name, preset.settings.get(name, default))
    if args.configs is None:
        resolved.configs = parse_configs(",".join(preset.configs))
    return resolved


def closing_note(args: argparse.Namespace) -> str:
    """What to read in the results: the preset's note when it ran as the preset defines it, else which of its
    settings were changed (the note's expectations assume the preset's own)."""
    preset = PRESETS[args.preset]
    if not args.changed:
        return f"[bold]{preset.name}:[/] {preset.note}"
    changed = ", ".join("--" + name.replace("_", "-") for name in args.changed)
    return (
        f"[dim]{preset.name} preset with {changed} changed: its note on what to expect (tokennorm demo --help, "
        f"docs/demo.md) assumes its own settings[/dim]"
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.tools import matplotlib_missing
    from tokennorm.tools.demo.train import resolve_device

    console = Console()
    args = resolve_settings(args)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        console.print(f"[red]tokennorm demo: {exc}[/]")
        return 2
    if args.d_model % args.heads or args.d_model % 2:
        console.print(
            f"[red]tokennorm demo: --d-model must be even and divisible by --heads, but got "
            f"--d-model {args.d_model} and --heads {args.heads}[/]"
        )
        return 2
    conditioned = [c.name for c in args.configs if c.condition]
    if conditioned and args.classes is None:
        console.print(
            f"[red]tokennorm demo: {', '.join(conditioned)} need classes: give --classes "
            f"{' or '.join(CLASS_SIGNALS)}[/]",
            soft_wrap=True,
        )
        return 2
    if not 0.0 <= args.dropout < 1.0:
        console.print(f"[red]tokennorm demo: --dropout must be in [0, 1), but got --dropout {args.dropout}[/]")
        return 2
    if matplotlib_missing():
        console.print(
            "[red]tokennorm demo: the loss curves need matplotlib (pip install matplotlib)[/]", soft_wrap=True
        )
        return 2
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        return _train_and_report(args, args.configs, device, console)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests): leave the setting as found


def _train_and_report(args: argparse.Namespace, configs: tuple[RunConfig, ...], device: torch.device, console) -> int:
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tokennorm.tools.demo.data import CharData, ClassedData, load_corpus, sample_batch, sample_classed_batch
    from tokennorm.tools.demo.report import position_summary, results_table, write_plot
    from tokennorm.tools.demo.train import ConfigResult, generate, train_one

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    text = load_corpus()
    data = CharData.from_text(text)
    classed = None if args.classes is None else ClassedData.from_text(text, args.classes, data)
    eval_gen = torch.Generator().manual_seed(args.seed + 2)

    def eval_batch(split: str):
        if classed is None:
            return (*sample_batch(getattr(data, split), args.batch_size, args.seq_len, eval_gen), None)
        return sample_classed_batch(getattr(classed, split), args.batch_size, args.seq_len, eval_gen)

    eval_sets = {
        split: [
            tuple(t.to(device) if t is not None else None for t in eval_batch(split)) for _ in range(args.eval_batches)
        ]
        for split in ("train", "val")
    }
    setup = (
        f"d_model={args.d_model}, layers={args.layers}, heads={args.heads}, seq_len={args.seq_len}, "
        f"batch={args.batch_size}, steps={args.steps}, lr={args.lr}, device={device}"
        f"{' (bf16 autocast)' if device.type == 'cuda' else ''}, seed={args.seed}"
        + ("" if classed is None else f", classes={args.classes} ({', '.join(classed.classes)})")
    )
    console.print(
        f"King Lear: {len(data.train):,} train / {len(data.val):,} val characters, "
        f"vocabulary {len(data.vocab)}\n{setup}"
    )

    results: list[ConfigResult] = []
    models = {}
    columns = (
        TextColumn("{task.description:<15}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[loss]}"),
    )
    with Progress(*columns, console=console) as progress:
        tasks = {cfg: progress.add_task(cfg.name, total=args.steps, loss="", start=False) for cfg in configs}
        for cfg in configs:
            progress.start_task(tasks[cfg])
            result, model = train_one(cfg, args, data, eval_sets, device, progress, tasks[cfg], classed)
            results.append(result)
            models[cfg.name] = model

    preset = PRESETS[args.preset]
    question = preset.question if not args.changed else f"{preset.name} preset, {', '.join(args.changed)} changed"
    plot_path, json_path = out / "loss_curves.png", out / "results.json"
    write_plot(
        plot_path,
        results,
        f"{question}\n(char-level causal LM on King Lear; {setup})",
        "leak" if any(r.norm == "batchnorm" for r in results) else "curves" if classed is None else "position",
        vocab_size=len(data.vocab),
    )
    payload = {
        "preset": args.preset,
        "changed": list(args.changed),
        "setup": {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("configs", "changed")},
        "configs": [c.name for c in configs],
        "device": str(device),
        "vocab_size": len(data.vocab),
        "results": [asdict(r) | {"final_train": r.final_train, "final_val": r.final_val} for r in results],
    }
    json_path.write_text(json.dumps(payload, indent=1, default=str))

    chance = math.log(len(data.vocab))
    console.print(results_table(results, f"final loss (nats/char; ln {len(data.vocab)} = {chance:.2f} is chance)"))
    if classed is not None:
        console.print(position_summary(results))
    console.print(f"loss curves: {plot_path}\nresults: {json_path}")
    console.print(closing_note(args))
    if args.changed and any(r.norm == "batchnorm" for r in results):
        console.print(
            "[yellow]batchnorm: its training-mode statistics pool every position, the future included; "
            "compare its eval-mode and training-mode validation losses.[/]"
        )
    finite = [r for r in results if math.isfinite(r.final_val)]
    if args.sample > 0 and finite:
        best = min(finite, key=lambda r: r.final_val)
        text = generate(models[best.name], data, "\n", args.sample, device, args.seed)
        console.print(f"\nsample from {best.name}:\n{text}", markup=False, highlight=False)
    return 0
