"""The demo's outputs: loss curves as a PNG and the final losses as a table.

The plots stay readable when a run diverges: the y axis spans the losses that matter (up to a little above
chance, ln V), values above it are drawn at the top edge with a ▲, and a run that stopped is marked ✕ with the
step where its loss stopped being finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from tokennorm.tools.demo.models import DEMO_NORMS
from tokennorm.tools.demo.train import ConfigResult


def _smoothed(values: Sequence[float]) -> list[float]:
    """Exponential moving average (0.9) of noisy minibatch losses, restarting after a non-finite value."""
    out, ema = [], None
    for v in values:
        ema = v if ema is None or not math.isfinite(ema) else 0.9 * ema + 0.1 * v
        out.append(ema)
    return out


def loss_axis_top(results: Sequence[ConfigResult], vocab_size: int) -> float:
    """The top of the loss axis: a little above chance (ln V), or above the highest validation loss a run that
    did not blow up reached after it started training, whichever is higher. The untrained model's first loss
    and a diverging run cannot stretch it (they are drawn along the top edge)."""
    chance = math.log(vocab_size)
    highest = max(
        (
            v
            for r in results
            if r.diverged_at is None
            for step, *values in zip(r.eval_steps, r.eval_val, r.eval_val_train_mode)
            if step > 0
            for v in values
            if math.isfinite(v) and v < 4 * chance
        ),
        default=chance,
    )
    return max(chance, highest) * 1.08


def _plot(ax: Any, steps: Sequence[int], values: Sequence[float], top: float, style: dict, marker: str = "") -> None:
    """``values`` clipped at ``top`` (the line runs along the edge there); for sparse series (evaluations) the
    clipped points are also marked ▲."""
    finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return
    xs, ys = zip(*finite)
    ax.plot(xs, [min(v, top) for v in ys], marker=marker, markersize=3, clip_on=False, **style)
    over = [(s, top) for s, v in finite if v > top]
    if over and len(finite) <= 50:
        ax.plot(*zip(*over), linestyle="none", marker="^", markersize=5, color=style["color"], clip_on=False)


# class-conditional runs: how each is drawn (the norm's colour would not tell them apart)
_CONDITIONED = {
    "adaln": ("AdaLN-Zero, told the class", "tab:green"),
    "adaln-null": ("AdaLN-Zero, one class for all", "tab:gray"),
}


def run_label(r: ConfigResult) -> str:
    """``LayerNorm (pre)``, and for a class-conditional run what it is told."""
    label = f"{DEMO_NORMS[r.norm].label} ({r.placement})"
    return f"{label}, {_CONDITIONED[r.condition][0]}" if r.condition else label


def _color(r: ConfigResult) -> str:
    return _CONDITIONED[r.condition][1] if r.condition else DEMO_NORMS[r.norm].color


def _mark_divergence(ax: Any, r: ConfigResult, top: float, color: str, label: bool = True) -> None:
    """✕ at the top edge where ``r`` diverged; with ``label``, the words beside it (on one panel only: the other
    panel's legend, placed by lines alone, could cover them)."""
    if r.diverged_at is None:
        return
    ax.plot([r.diverged_at], [top], marker="X", markersize=9, color=color, clip_on=False, linestyle="none")
    if not label:
        return
    ax.annotate(
        f"{run_label(r)} diverged at step {r.diverged_at}",
        xy=(r.diverged_at, top),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color=color,
        ha="left",
        va="top",
    )


def write_plot(path: Path, results: list[ConfigResult], title: str, kind: str = "curves", vocab_size: int = 65) -> None:
    """Save :func:`loss_figure` at ``path`` (PNG)."""
    loss_figure(results, title, kind, vocab_size).savefig(path, dpi=100)


def loss_figure(results: list[ConfigResult], title: str, kind: str = "curves", vocab_size: int = 65) -> Any:
    """Two panels. ``curves``: smoothed training-mode minibatch loss per step; eval-mode validation loss.
    ``leak``: the minibatch loss as training reports it; validation loss in training mode (dotted, batch
    statistics) against eval mode (solid, running statistics: what inference computes). ``position``: the two
    ``curves`` panels and a third, the final validation loss at each position of the sequence. Returns the
    Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(16, 4.8) if kind == "position" else (12, 4.8), layout="constrained")
    ax_train, ax_val, *ax_position = fig.subplots(1, 3 if kind == "position" else 2)
    top = loss_axis_top(results, vocab_size)
    chance = math.log(vocab_size)
    for r in results:
        color, label = _color(r), run_label(r)
        style = dict(color=color, linestyle="-" if r.placement == "pre" else "--", label=label)
        if kind == "leak":
            style["linestyle"] = "-"
        _plot(ax_train, r.steps, _smoothed(r.train_loss), top, style)
        _mark_divergence(ax_train, r, top, color)
        if kind == "leak":
            _plot(ax_val, r.eval_steps, r.eval_val, top, {**style, "label": f"{label}, eval mode"}, ".")
            _plot(
                ax_val,
                r.eval_steps,
                r.eval_val_train_mode,
                top,
                {**style, "linestyle": ":", "label": f"{label}, training mode"},
                ".",
            )
        else:
            _plot(ax_val, r.eval_steps, r.eval_val, top, style, ".")
        _mark_divergence(ax_val, r, top, color, label=False)
        if ax_position and r.val_by_position:
            ax_position[0].plot(range(len(r.val_by_position)), r.val_by_position, marker=".", **style)
    for ax in (ax_train, ax_val):
        ax.axhline(chance, color="black", linewidth=0.8, linestyle=(0, (1, 3)))
        ax.text(
            0.99,
            chance,
            f"chance: ln {vocab_size} = {chance:.2f}",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=7.5,
        )
        ax.set_ylim(top=top)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/char)")
        ax.grid(alpha=0.3)
    ax_train.set_title("training loss as the loop sees it (minibatch, training mode, EMA 0.9)", fontsize=10)
    if kind == "leak":
        ax_val.set_title("validation loss: training mode (dotted, batch statistics) vs eval mode (solid)", fontsize=10)
    else:
        ax_val.set_title("validation loss (eval mode)", fontsize=10)
    handles, labels = ax_val.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="^", color="black"))
    labels.append("above the axis (drawn at its top)")
    ax_val.legend(handles, labels, fontsize=8, loc="best")
    ax_train.legend(fontsize=8, loc="best")
    if ax_position:
        ax = ax_position[0]
        ax.set_title("final validation loss at each position (eval mode)", fontsize=10)
        ax.set_xlabel("position in the sequence (0: no context yet)")
        ax.set_ylabel("cross-entropy (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def position_summary(results: list[ConfigResult], first: int = 4) -> str:
    """One line: each run's final validation loss over the first ``first`` positions and over the rest (where a
    class told up front helps most: before the characters have given it away)."""
    parts = [
        f"{r.name} {_mean(r.val_by_position[:first]):.4f} / {_mean(r.val_by_position[first:]):.4f}"
        for r in results
        if len(r.val_by_position) > first
    ]
    return f"validation loss at positions 0-{first - 1} / {first} on: " + ", ".join(parts)


def results_table(results: list[ConfigResult], title: str):
    from rich.table import Table

    table = Table(title=title)
    long_names = max((len(r.name) for r in results), default=0) > 16
    columns = ["config", "params", "train loss", "val loss", "val (train mode)", "best val", "time (s)"]
    for col in columns:
        if col == "config":  # a long name (layernorm-pre+adaln-null) folds rather than cut the numbers short
            table.add_column(col, justify="left", no_wrap=not long_names, overflow="fold")
        else:
            table.add_column(col, justify="right", min_width=7 if long_names else None)
    best = min((r.final_val for r in results if math.isfinite(r.final_val) and r.diverged_at is None), default=math.nan)
    for r in results:
        train, val = f"{r.final_train:.4f}", f"{r.final_val:.4f}"
        val_train_mode = f"{r.eval_val_train_mode[-1]:.4f}" if r.eval_val_train_mode else "-"
        if r.final_val == best:
            val = f"[bold green]{val}[/]"
        if r.diverged_at is not None:
            train = val = val_train_mode = f"[red]diverged at step {r.diverged_at}[/]"
        best_val = min((v for v in r.eval_val if math.isfinite(v)), default=math.nan)
        table.add_row(r.name, f"{r.parameters:,}", train, val, val_train_mode, f"{best_val:.4f}", f"{r.seconds:.1f}")
    return table
