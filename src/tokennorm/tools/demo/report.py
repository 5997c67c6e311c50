"""The demo's outputs: loss curves as a PNG and the final losses as a table."""

from __future__ import annotations

import math
from pathlib import Path

from tokennorm.tools.demo.train import ConfigResult


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
