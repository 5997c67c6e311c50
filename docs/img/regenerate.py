"""Regenerate the figures in docs/img/ that README.md and docs/ show, with the commands a user would run.

    python3 docs/img/regenerate.py            # every figure; the four demo presets take ~6 minutes on 2 cores
    python3 docs/img/regenerate.py --no-demo  # the figures that take seconds

Each figure is written by ``tokennorm explain | audit | demo`` into a temporary folder, then stored as a
palette PNG (Pillow's median-cut quantization: 96 colours, 224 for the heatmap's continuous colour scale) so that
all of them together stay a few hundred KB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent

# (file in docs/img, tokennorm arguments, the figure that command writes into {out})
FIGURES = [
    ("block.png", ["explain", "--block", "--format", "png", "--out", "{out}"], "block.png"),
    ("norm_groups.png", ["explain", "--shape", "2,16,64", "--format", "png", "--out", "{out}"], "norm_groups.png"),
    ("norm_cubes.png", ["explain", "--shape", "2,16,64", "--format", "png", "--out", "{out}"], "norm_cubes.png"),
    ("padding.png", ["explain", "--padding", "--format", "png", "--out", "{out}"], "padding.png"),
    ("audit_batchnorm.png", ["audit", "--demo", "batchnorm", "--png", "{out}/audit.png"], "audit.png"),
    (
        "image_groups.png",
        ["explain", "--layout", "channels-first", "--shape", "2,8,4,4", "--format", "png", "--out", "{out}"],
        "image_groups.png",
    ),
]
COLORS = {"audit_batchnorm.png": 224}  # default 96
DEMOS = [
    (f"demo_{preset}.png", ["demo", "--preset", preset, "--out", "{out}"], "loss_curves.png")
    for preset in ("depth", "conditioning", "batchnorm", "detach")
]


def store(source: Path, target: Path, colors: int = 96) -> int:
    """``source`` as a palette PNG at ``target``; returns its size in bytes."""
    image = Image.open(source).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    image.save(target, optimize=True)
    return target.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-demo", action="store_true", help="skip the demo presets (minutes)")
    args = parser.parse_args()
    for name, argv, written in FIGURES + ([] if args.no_demo else DEMOS):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "tokennorm", *(a.format(out=out) for a in argv)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode not in (0, 1):  # audit exits 1 when it finds leakage, as the demo does
                sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
            size = store(Path(out) / written, HERE / name, COLORS.get(name, 96))
        print(f"{name}: {size / 1024:.0f} KB  ({' '.join(argv[:3])} …)")


if __name__ == "__main__":
    main()
