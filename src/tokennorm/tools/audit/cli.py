"""``tokennorm audit``: measure future, cross-batch and padding leakage of a model (see :mod:`tokennorm.tools.audit`).

The model is a built-in demo (``--demo layernorm | rmsnorm | batchnorm | dyt``: one causal decoder, four norms;
``--demo adaln``: the LayerNorm one class-conditional, AdaLN-Zero blocks, each sequence given its own class) or
``--model module:factory``, an import path to an ``nn.Module`` or to a callable returning one, called with the
keyword arguments of ``--model-args`` (none by default). Its input is token ids (``--tokens B,N``, ids below
``--vocab``) or a floating tensor (``--shape B,N,C``). ``--pad K`` marks K positions of the last batch item as
PAD and passes the key-padding mask to the model as ``key_padding_mask=`` (``--mask-arg``). A per-item condition
(``--cond-classes K``: a class id below K per item, distinct where K allows; ``--cond-dim D``: a standard
normal [B, D] vector) is passed as ``--cond-arg`` (default ``cond``), and the ``condition`` check tests that no
item depends on another item's condition. The model is audited as a causal decoder unless ``--no-causal`` is
given.

Prints a table of findings (relative magnitude by autograd and by perturbation, forbidden pairs above the
tolerance out of those measured, and where), the module where each leak first appears, progress on stderr,
writes the token-to-token dependency heatmap with ``--png PATH`` and the full report with ``--json PATH``.

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
    import torch
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
    src.add_argument(
        "--demo", choices=DEMOS, help="built-in causal decoder (tokennorm.transformer.CausalLM) with this norm"
    )
    src.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="import path of an nn.Module, or of a callable returning one (called with --model-args)",
    )
    parser.add_argument(
        "--model-args",
        metavar="K=V,...",
        default="",
        help="keyword arguments for --model's callable, Python literals: d_model=32,nhead=4,batch_first=True",
    )
    spec = parser.add_mutually_exclusive_group()
    spec.add_argument(
        "--tokens",
        metavar="B,N",
        help=f"token-id input of B sequences of N tokens (default for demos: {DEMO_TOKENS[0]},{DEMO_TOKENS[1]})",
    )
    spec.add_argument("--shape", metavar="B,N,C", help="floating input of this shape (standard normal)")
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help="token ids are drawn below this (default: the model's vocab_size or nn.Embedding size)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the model and floating input (float64 resolves weaker dependence)",
    )
    parser.add_argument(
        "--pad",
        type=int,
        default=None,
        help=f"PAD positions in the last batch item (default: {DEMO_PAD} for demos, else 0)",
    )
    parser.add_argument(
        "--pad-side",
        choices=("left", "right"),
        default="left",
        help="where the PAD positions are (left: a causal model can see them without the mask)",
    )
    parser.add_argument(
        "--mask-arg",
        default="key_padding_mask",
        help="keyword the key-padding mask is passed as; 'none': not passed (the padding check "
        "then tests a model that ignores padding)",
    )
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model is a causal decoder: check future leakage (output t depending on input "
        "s > t). On by default; --no-causal for encoders, which may look ahead",
    )
    cond = parser.add_mutually_exclusive_group()
    cond.add_argument(
        "--cond-classes",
        type=int,
        metavar="K",
        help="give each item its own class id below K (0, 1, …, mod K) as the model's condition "
        "(class-conditional models; --demo adaln: 4 classes, passed as classes=)",
    )
    cond.add_argument(
        "--cond-dim", type=int, metavar="D", help="give each item its own condition vector [D] (standard normal)"
    )
    parser.add_argument(
        "--cond-arg", default=None, help="keyword the condition is passed as (default: cond; classes for --demo adaln)"
    )
    parser.add_argument("--mode", choices=MODE_CHOICES, default="both", help="train mode, eval mode, or both")
    parser.add_argument(
        "--tol", type=float, default=None, help="relative dependence counted as leakage (default: 128·eps of the dtype)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the input, the probes and the dropout masks")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="output positions given a Jacobian row (default: all if causal, else 16)",
    )
    parser.add_argument("--max-columns", type=int, default=16, help="input positions perturbed one at a time")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: an audit's many small passes gain nothing from more, and threads "
        "waiting for a busy core slow each pass down; raise it for wide models)",
    )
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


def parse_model_args(text: str) -> dict[str, Any]:
    """``"d_model=32,nhead=4,batch_first=True"`` -> keyword arguments (values are Python literals, or strings)."""
    import ast

    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SpecError(f"--model-args must be NAME=VALUE pairs separated by commas, but got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()  # a bare word: a string (e.g. activation=gelu)
    return kwargs


def resolve_device(name: str) -> torch.device:
    """``name`` as a device this machine has; SpecError naming --device otherwise."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SpecError(f"--device {name!r} is not a device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SpecError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise SpecError(f"--device must be cpu or cuda, but got --device {name}")
    return device


def load_model(path: str, kwargs: Optional[dict[str, Any]] = None) -> nn.Module:
    """The nn.Module named by ``module:attr`` (``attr`` may be dotted; a callable is called with ``kwargs``)."""
    from torch import nn

    kwargs = kwargs or {}
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
        try:
            obj = obj(**kwargs)
        except (TypeError, ValueError) as e:
            hint = "" if kwargs else "; pass its arguments with --model-args NAME=VALUE,..."
            raise SpecError(f"calling {attr}({_call_args(kwargs)}) from --model {path!r} failed: {e}{hint}") from e
    elif kwargs:
        raise SpecError(f"--model {path!r} is an nn.Module instance, not a callable: --model-args cannot apply")
    if not isinstance(obj, nn.Module):
        raise SpecError(f"--model {path!r} must give an nn.Module, but gave {type(obj).__name__}")
    return obj


def _call_args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def build_inputs(args: argparse.Namespace, model: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
    """The input tensor and key-padding mask the arguments describe."""
    import torch

    from tokennorm.tools.audit.demos import demo_inputs
    from tokennorm.tools.audit.subject import vocab_size

    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
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


def build_condition(args: argparse.Namespace, batch: int) -> tuple[Optional[Tensor], str]:
    """The per-item condition the arguments describe (None: none) and the keyword it is passed as."""
    import torch

    from tokennorm.tools.audit.demos import demo_condition

    if args.cond_arg is not None and args.cond_classes is None and args.cond_dim is None and args.demo != "adaln":
        raise SpecError("--cond-arg needs a condition: --cond-classes K or --cond-dim D")
    device = resolve_device(args.device)
    if args.cond_classes is not None:
        if args.cond_classes < 1:
            raise SpecError(f"--cond-classes must be positive, but got --cond-classes {args.cond_classes}")
        value = torch.arange(batch) % args.cond_classes
    elif args.cond_dim is not None:
        if args.cond_dim < 1:
            raise SpecError(f"--cond-dim must be positive, but got --cond-dim {args.cond_dim}")
        gen = torch.Generator().manual_seed(args.seed + 1)
        value = torch.randn(batch, args.cond_dim, generator=gen, dtype=getattr(torch, args.dtype))
    else:
        value = demo_condition(args.demo, batch) if args.demo else None
    default_arg = "classes" if args.demo == "adaln" else "cond"
    return (None if value is None else value.to(device)), args.cond_arg or default_arg


def _fmt(v: float) -> str:
    return "inf" if v == float("inf") else ("0" if v == 0 else f"{v:.3g}")


def _count(m: Any) -> str:
    return f"{m.count} of {m.checked}"


def print_report(report: AuditReport, console: Any) -> None:
    """The findings as a rich table, with what the input was, what each column counts, what each pinpoint means
    and the module where each leak first appears."""
    from rich.table import Table

    kind = "token ids" if report.token_ids else "floating input"
    console.print(
        f"[bold]{report.model_name}[/bold] on {kind} {list(report.shape)} "
        f"({str(report.dtype).removeprefix('torch.')}), causal={report.causal}, "
        f"tolerance {report.tol:.3g} (relative), {report.seconds:.2f} s"
    )
    table = Table(title="leakage: dependence relative to the strongest measured (1 = as strong)")
    columns = ("mode", "check", "verdict", "autograd", "pairs", "perturb.", "pairs", "where (strongest first)")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if 3 <= i <= 6 else "left", no_wrap=i < 7)
    legend: dict[str, str] = {}
    for f in report.findings:
        verdict = "[bold red]LEAKS[/bold red]" if f.leaks else "[green]clean[/green]"
        if not f.agree:
            verdict += " [yellow](methods disagree)[/yellow]"
        m = f.autograd if f.autograd.count else f.perturbation
        where = " ".join(f"({a},{b})" for a, b in m.where[:3]) + (" …" if m.count > 3 else "")
        if m.where:
            legend[f"{f.check} ({m.method})"] = WHERE[(f.check, m.method)]
        table.add_row(
            f.mode,
            f.check,
            verdict,
            _fmt(f.autograd.magnitude),
            _count(f.autograd),
            _fmt(f.perturbation.magnitude),
            _count(f.perturbation),
            where or "-",
        )
    console.print(table)
    console.print(
        "[dim]autograd, perturb.: the strongest forbidden dependence each method measured; pairs: "
        "forbidden (output, input) pairs above the tolerance, of those the method measured[/dim]"
    )
    for name, meaning in legend.items():
        console.print(f"[dim]where, {name}: {meaning}[/dim]")
    if report.condition is not None:
        c = report.condition
        given = f"{c.arg}={c.values}" if c.values is not None else f"{c.arg} of shape {list(c.shape)} ({c.dtype})"
        console.print(
            f"condition: {given}, one per batch item, each item its own; check 'condition': does item i depend "
            "on another item j's condition (pinpoint (i, j))?"
        )
        ignored = [mode for mode, own in c.own.items() if own == 0]
        if ignored:
            console.print(
                f"[yellow]condition ({', '.join(ignored)}): some item's output does not depend on its own condition "
                "at all (AdaLN-Zero at its zero initialisation does not): the condition check is vacuous[/yellow]"
            )
        elif c.own:
            weakest = ", ".join(f"{mode} {_fmt(own)}" for mode, own in c.own.items())
            console.print(
                f"[dim]condition: each item's output depends on its own condition (weakest item, relative to the "
                f"strongest condition dependence: {weakest})[/dim]"
            )
    batch, length = report.shape[:2]
    for mode, count in report.nonfinite.items():
        console.print(
            f"[yellow]{mode}: {count} of {batch * length} output positions are NaN or inf before any perturbation "
            "(e.g. a query whose keys are all masked, and what it spreads to); perturbation cannot see them move, "
            "autograd's pass (with a graph) may compute them differently[/yellow]"
        )
    for check, why in report.skipped.items():
        console.print(f"[dim]{check}: not checked ({why})[/dim]")
    for f in report.findings:
        if f.leaks and f.first_module is not None:
            first, rest = f.first_module, len(f.modules) - 1
            console.print(
                f"{f.check} ({f.mode}): first appears in the output of [bold]{first.name}[/bold] "
                f"({first.type}, {_fmt(first.magnitude)}), then in {rest} later module output(s)"
            )
        elif f.leaks:
            console.print(f"{f.check} ({f.mode}): no module output shows it by perturbation (autograd only)")
    if report.leaks:
        leaking = sorted({f"{f.check} ({f.mode})" for f in report.findings if f.leaks})
        console.print(f"[bold red]leakage found:[/bold red] {', '.join(leaking)}")
    else:
        console.print("[bold green]no leakage found[/bold green] (every dependence that must be 0 is ≤ tolerance)")


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tokennorm.tools import matplotlib_missing
    from tokennorm.tools.audit.demos import demo_model
    from tokennorm.tools.audit.measure import audit

    console, err = Console(), Console(stderr=True)
    threads = torch.get_num_threads()
    try:
        if args.threads < 1:
            raise SpecError(f"--threads must be positive, but got --threads {args.threads}")
        torch.set_num_threads(args.threads)
        if args.png and matplotlib_missing():
            raise SpecError("--png needs matplotlib (pip install matplotlib)")
        device = resolve_device(args.device)
        model_args = parse_model_args(args.model_args)
        if model_args and not args.model:
            raise SpecError("--model-args needs --model")
        model = demo_model(args.demo) if args.demo else load_model(args.model, model_args)
        model = model.to(device=device, dtype=getattr(torch, args.dtype))
        inputs, mask = build_inputs(args, model)
        condition, condition_arg = build_condition(args, inputs.shape[0])
        mask_arg = None if args.mask_arg.lower() == "none" else args.mask_arg
        columns = (
            TextColumn("audit {task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("passes"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err) as bar:
            tasks: dict[str, Any] = {}

            def progress(done: int, total: int, stage: str) -> None:
                mode = stage.split(":")[0]
                if mode not in tasks:
                    tasks[mode] = bar.add_task(stage, total=total)
                bar.update(tasks[mode], completed=done, total=total, description=stage)

            report = audit(
                model,
                inputs,
                causal=args.causal,
                modes=MODE_CHOICES[args.mode],
                key_padding_mask=mask,
                mask_arg=mask_arg,
                tol=args.tol,
                seed=args.seed,
                max_rows=args.max_rows,
                max_columns=args.max_columns,
                progress=progress,
                condition=condition,
                condition_arg=condition_arg,
            )
    except SpecError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    except (RuntimeError, ValueError, TypeError) as e:  # the model could not run on this input
        first_line = str(e).splitlines()[0] if str(e) else ""
        err.print(
            f"[red]error:[/red] the model could not be audited on this input: {type(e).__name__}: {escape(first_line)}",
            soft_wrap=True,
            highlight=False,
        )
        return 2
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests): leave the setting as found
    if args.demo:
        report.model_name = f"demo {args.demo} ({report.model_name})"
    elif args.model:
        report.model_name = f"{args.model} ({report.model_name})"
    print_report(report, console)
    if args.png:
        from tokennorm.tools.audit.heatmap import plot_dependency

        path = plot_dependency(report, args.png)
        console.print(f"heatmap: {path}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n")
        console.print(f"report: {path}")
    return 1 if report.leaks else 0
