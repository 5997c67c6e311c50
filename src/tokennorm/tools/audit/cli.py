"""``tokennorm audit``: measure future, cross-batch and padding leakage of a model (see :mod:`tokennorm.tools.audit`).

The model is a built-in demo (``--demo layernorm | rmsnorm | batchnorm``: one causal decoder, three norms) or
``--model module:factory``, an import path to an ``nn.Module`` or to a callable returning one (called with no
arguments). Its input is token ids (``--tokens B,N``, ids below ``--vocab``) or a floating tensor
(``--shape B,N,C``). ``--pad K`` marks K positions of the last batch item as PAD and passes the key-padding
mask to the model as ``key_padding_mask=`` (``--mask-arg``).

Prints a table of findings (relative magnitude by autograd and by perturbation, and where), writes the
token-to-token dependency heatmap with ``--png PATH`` and the full report with ``--json PATH``.

Exit code: 0 when no leakage was found, 1 when some was, 2 when the model or the input spec is unusable.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tokennorm.tools.audit.demos import DEMOS
from tokennorm.tools.audit.report import MODES, WHERE

if TYPE_CHECKING:
    from torch import Tensor, nn

    from tokennorm.tools.audit.report import AuditReport

DTYPES = ("float32", "float64")
MODE_CHOICES = {"both": MODES, "train": ("train",), "eval": ("eval",)}
DEMO_TOKENS = (2, 16)
DEMO_PAD = 4


class SpecError(ValueError):
    """The model or the input spec cannot be used (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo", choices=DEMOS,
                     help="built-in causal decoder (tokennorm.transformer.CausalLM) with this norm")
    src.add_argument("--model", metavar="MODULE:FACTORY",
                     help="import path of an nn.Module, or of a callable returning one (called without arguments)")
    spec = parser.add_mutually_exclusive_group()
    spec.add_argument("--tokens", metavar="B,N", help="token-id input of B sequences of N tokens "
                      f"(default for demos: {DEMO_TOKENS[0]},{DEMO_TOKENS[1]})")
    spec.add_argument("--shape", metavar="B,N,C", help="floating input of this shape (standard normal)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="token ids are drawn below this (default: the model's vocab_size or nn.Embedding size)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the model and floating input (float64 resolves weaker dependence)")
    parser.add_argument("--pad", type=int, default=None,
                        help=f"PAD positions in the last batch item (default: {DEMO_PAD} for demos, else 0)")
    parser.add_argument("--pad-side", choices=("left", "right"), default="left",
                        help="where the PAD positions are (left: a causal model can see them without the mask)")
    parser.add_argument("--mask-arg", default="key_padding_mask",
                        help="keyword the key-padding mask is passed as; 'none': not passed (the padding check "
                             "then tests a model that ignores padding)")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True,
                        help="check future leakage (output t depending on input s > t); --no-causal for encoders")
    parser.add_argument("--mode", choices=MODE_CHOICES, default="both", help="train mode, eval mode, or both")
    parser.add_argument("--tol", type=float, default=None,
                        help="relative dependence counted as leakage (default: 128·eps of the dtype)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input, the probes and the dropout masks")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="output positions given a Jacobian row (default: all if causal, else 16)")
    parser.add_argument("--max-columns", type=int, default=16, help="input positions perturbed one at a time")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, ...)")
    parser.add_argument("--png", metavar="PATH", help="write the token-to-token dependency heatmap here")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON here")


def _ints(text: str, count: int, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 1:
        raise SpecError(f"{flag} must be {count} positive integers separated by commas, but got {flag} {text!r}")
    return values


def load_model(path: str) -> nn.Module:
    """The nn.Module named by ``module:attr`` (``attr`` may be dotted; a callable is called without arguments)."""
    from torch import nn

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"--model must look like 'package.module:factory', but got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"cannot import {module_name!r} (from --model {path!r}): {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module_name!r} has no attribute {attr!r} (from --model {path!r})")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, nn.Module):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise SpecError(f"--model {path!r} must give an nn.Module, but gave {type(obj).__name__}")
    return obj


def build_inputs(args: argparse.Namespace, model: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
    """The input tensor and key-padding mask the arguments describe."""
    import torch

    from tokennorm.tools.audit.demos import demo_inputs
    from tokennorm.tools.audit.subject import vocab_size

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    if args.shape:
        batch, length, channels = _ints(args.shape, 3, "--shape")
        inputs = torch.randn(batch, length, channels, generator=gen, dtype=dtype).to(device)
    else:
        if args.tokens is None and args.demo is None:
            raise SpecError("give the input: --tokens B,N (token ids) or --shape B,N,C (floating)")
        batch, length = _ints(args.tokens, 2, "--tokens") if args.tokens else DEMO_TOKENS
        vocab = args.vocab
        if vocab is None:
            try:
                vocab = vocab_size(model)
            except TypeError as e:
                raise SpecError(f"{e}; give --vocab") from e
        if vocab < 2:
            raise SpecError(f"--vocab must be at least 2, but got --vocab {vocab}")
        inputs = None
    pad = args.pad if args.pad is not None else (DEMO_PAD if args.demo else 0)
    if not 0 <= pad < length:
        raise SpecError(f"--pad must be in [0, N={length}), but got --pad {pad}")
    if inputs is None:
        tokens, mask = demo_inputs(batch, length, pad, vocab, pad_id=0, seed=args.seed)
        if args.pad_side == "right":
            tokens, mask = tokens.flip(1), mask.flip(1)
        inputs = tokens.to(device)
    else:
        mask = torch.zeros(batch, length, dtype=torch.bool)
        if pad:
            mask[-1, :pad] = True
            if args.pad_side == "right":
                mask = mask.flip(1)
    return inputs, (mask.to(device) if pad else None)


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else ("0" if v == 0 else f"{v:.3g}")


def print_report(report: AuditReport, console: Any) -> None:
    """The findings as a rich table, with what the input was and what each pinpoint means."""
    from rich.table import Table

    kind = "token ids" if report.token_ids else "floating input"
    console.print(f"[bold]{report.model_name}[/bold] on {kind} {list(report.shape)} "
                  f"({str(report.dtype).removeprefix('torch.')}), causal={report.causal}, "
                  f"tolerance {report.tol:.3g} (relative), {report.seconds:.2f} s")
    table = Table(title="leakage: dependence relative to the strongest measured (1 = as strong)")
    for col in ("mode", "check", "verdict", "autograd", "perturb.", "count", "where (strongest first)"):
        table.add_column(col, justify="right" if col in ("autograd", "perturb.", "count") else "left",
                         no_wrap=col != "where (strongest first)")
    legend: dict[str, str] = {}
    for f in report.findings:
        verdict = "[bold red]LEAKS[/bold red]" if f.leaks else "[green]clean[/green]"
        if not f.agree:
            verdict += " [yellow](methods disagree)[/yellow]"
        m = f.autograd if f.autograd.count else f.perturbation
        where = " ".join(f"({a},{b})" for a, b in m.where[:3]) + (" …" if m.count > 3 else "")
        if m.where:
            legend[f"{f.check} ({m.method})"] = WHERE[(f.check, m.method)]
        table.add_row(f.mode, f.check, verdict, _fmt(f.autograd.magnitude), _fmt(f.perturbation.magnitude),
                      f"{f.autograd.count}/{f.perturbation.count}", where or "-")
    console.print(table)
    console.print("[dim]count: pairs above the tolerance, autograd/perturbation[/dim]")
    for name, meaning in legend.items():
        console.print(f"[dim]where, {name}: {meaning}[/dim]")
    for check, why in report.skipped.items():
        console.print(f"[dim]{check}: not checked ({why})[/dim]")
    if report.leaks:
        leaking = sorted({f"{f.check} ({f.mode})" for f in report.findings if f.leaks})
        console.print(f"[bold red]leakage found:[/bold red] {', '.join(leaking)}")
    else:
        console.print("[bold green]no leakage found[/bold green] (every dependence that must be 0 is ≤ tolerance)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from tokennorm.tools.audit.demos import demo_model
    from tokennorm.tools.audit.heatmap import plot_dependency
    from tokennorm.tools.audit.measure import audit

    console, err = Console(), Console(stderr=True)
    try:
        model = demo_model(args.demo) if args.demo else load_model(args.model)
        model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
        inputs, mask = build_inputs(args, model)
        mask_arg = None if args.mask_arg.lower() == "none" else args.mask_arg
        report = audit(
            model, inputs, causal=args.causal, modes=MODE_CHOICES[args.mode], key_padding_mask=mask,
            mask_arg=mask_arg, tol=args.tol, seed=args.seed, max_rows=args.max_rows, max_columns=args.max_columns,
        )
    except SpecError as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    if args.demo:
        report.model_name = f"demo {args.demo} ({report.model_name})"
    elif args.model:
        report.model_name = f"{args.model} ({report.model_name})"
    print_report(report, console)
    if args.png:
        path = plot_dependency(report, args.png)
        console.print(f"heatmap: {path}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n")
        console.print(f"report: {path}")
    return 1 if report.leaks else 0

