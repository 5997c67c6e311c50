"""The token-to-token dependency matrices of an :class:`~tokennorm.tools.audit.report.AuditReport` as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from tokennorm.tools.audit.report import AuditReport


def plot_dependency(report: AuditReport, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Write :func:`dependency_figure` as a PNG (or the format of ``path``'s suffix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dependency_figure(report, title).savefig(path, dpi=110)
    return path


def dependency_figure(report: AuditReport, title: Optional[str] = None) -> Any:
    """The token-to-token dependency matrices as a heatmap figure (matplotlib Figure).

    One row of panels per mode, autograd left, perturbation right; log colour scale of the relative
    dependence, white = exactly 0, grey = not measured, red squares = the strongest pinpointed future leaks
    (up to ten), red line on the colour bar = the tolerance. For causal audits everything right of the red
    staircase is the future. A legend under the panels says all of this; the title names the module where each
    leak first appears.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    modes = list(report.matrices)
    vmin = report.tol / 100
    cmap = colormaps["viridis"].with_extremes(under="white", bad="lightgrey")
    fig = Figure(figsize=(10, 4.4 * len(modes) + 0.9), layout="constrained")
    axes = fig.subplots(len(modes), 2, squeeze=False)
    labels = {"autograd": "autograd  ‖uᵀ ∂y_t/∂x_s‖", "perturbation": "perturbation  ‖Δy_t‖, x_s replaced"}
    image = None
    for row, mode in zip(axes, modes):
        for ax, (method, matrix) in zip(row, report.matrices[mode].items()):
            data = matrix.clone()
            data[data == 0] = vmin / 10  # exact zeros: drawn in the "under" colour
            image = ax.imshow(data.numpy(), cmap=cmap, norm=LogNorm(vmin=vmin, vmax=1.0), interpolation="nearest")
            n = matrix.shape[0]
            if report.causal:  # staircase between s ≤ t (allowed) and s > t (the future)
                steps = [(t + 0.5, t + dy) for t in range(n - 1) for dy in (-0.5, 0.5)]
                ax.plot(*zip(*steps), color="red", linewidth=0.8)
            future = next((f for f in report.findings if f.mode == mode and f.check == "future"), None)
            for t, s in getattr(future, method).where if future else []:
                ax.add_patch(_square(s, t))  # the pinpointed leaks
            ax.set_title(f"{mode}: {labels[method]}", fontsize=10)
            ax.set_xlabel("input position s")
            ax.set_ylabel("output position t")
    verdict = "LEAKS" if report.leaks else "clean"
    lines = [title or f"{report.model_name} {list(report.shape)}: {verdict} (tol {report.tol:.2g})"]
    origins: dict[tuple[str, str, str], list[str]] = {}  # (mode, module, type) -> checks whose leak starts there
    for f in report.findings:
        if f.leaks and f.first_module is not None:
            origins.setdefault((f.mode, f.first_module.name, f.first_module.type), []).append(f.check)
    for (mode, name, kind), checks in origins.items():
        lines.append(f"{mode} mode: {', '.join(checks)} leakage first appears in the output of {name} ({kind})")
    fig.suptitle("\n".join(lines[:4]), fontsize=10)
    bar = fig.colorbar(image, ax=axes, extend="min", shrink=0.8, label="relative dependence (log)")
    bar.ax.axhline(report.tol, color="red", linewidth=1.5)
    legend = [
        Patch(facecolor="white", edgecolor="black", label="exactly 0: no path from x_s to y_t"),
        Patch(facecolor="lightgrey", edgecolor="black", label="not measured"),
        Line2D([], [], color="red", linewidth=1.5, label=f"tolerance {report.tol:.2g} (on the colour bar)"),
    ]
    if report.causal:
        legend += [
            Line2D([], [], color="red", linewidth=0.8, label="staircase: right of it, s > t is the future"),
            Patch(facecolor="none", edgecolor="red", linewidth=1.2, label="strongest future leaks found (up to 10)"),
        ]
    fig.legend(handles=legend, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def _square(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2)
