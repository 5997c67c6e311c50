"""The tools behind the ``tokennorm`` command, one package each, none importing another (except where
tests/api/test_imports.py declares it: the kernel report and tune use the benchmark's cases and harness):

``verify``       every op, forward and backward, in every dtype, against the float64 reference
``bench``        throughput and per-call latency against torch, torch.compile and installed peers
``tune``         which of tokennorm's kernels and torch's the ``auto`` backend runs on this GPU, measured
``audit``        does an output token depend on future tokens, other batch items or padding? (any model)
``explain``      which elements share statistics under each norm; LayerNorm step by step; the classic mistakes
``demo``         a tiny causal LM trained with each norm and placement
``patch_check``  :func:`tokennorm.patch` on a local Hugging Face model, and the difference it makes

Each has a ``cli.py`` with ``add_arguments(parser)`` and ``run(args) -> int``, which imports torch and the tool's
API only inside ``run``; :mod:`tokennorm.cli` imports only the command being run. What they share is here:
running a command again with tokennorm's Triton kernels in Triton's interpreter (``--interpret``), whether
matplotlib (for the figures) can be imported, and the progress bar of a measuring loop.
"""

import contextlib
from typing import Any, Callable, Iterator, Optional


def rerun_with_interpreted_kernels(argv: list[str]) -> int:
    """Run ``tokennorm *argv`` again in a subprocess whose tokennorm runs its Triton kernels in Triton's
    interpreter on the CPU, and return its exit code. A subprocess, because ``TRITON_INTERPRET=1`` only takes
    effect if set before the kernels are defined (at import)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "TOKENNORM_BACKEND": "triton"}
    return subprocess.run([sys.executable, "-m", "tokennorm", *argv], env=env).returncode


def matplotlib_missing() -> bool:
    """True when matplotlib (audit, explain and demo draw with it) cannot be imported; does not import it."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is None
    except (ImportError, ValueError):  # a stub in sys.modules (tests) or a broken install
        return True


@contextlib.contextmanager
def progress_bar(
    console: Any, description: str, total: Optional[int] = None
) -> Iterator[Callable[[int, int, str], None]]:
    """A transient rich progress bar on ``console`` (gone when the block ends); yields the callback a measuring
    loop calls as ``on_task(done, total, description)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def on_task(done: int, total: int, description: str) -> None:
            progress.update(task, completed=done, total=total, description=description)

        yield on_task
