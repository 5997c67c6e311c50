"""Test session setup: without a GPU, Triton kernels run on the CPU in Triton's interpreter.

TRITON_INTERPRET must be set before tokennorm's kernels are defined (triton.jit reads it then), so it is set
here, before any test module imports tokennorm.

Markers (registered in pyproject.toml): ``gpu`` tests are skipped without CUDA; ``interpret`` marks every test
that runs tokennorm's Triton kernels, and without a GPU a test that launches a kernel in the interpreter
without that marker fails, so the fast lane (``-m "not slow and not interpret"``) stays what it claims to be.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The tests' tensors are small: thread hand-offs cost more than they save, and on a busy 2-core machine OpenMP
# workers waiting for a core made the CPU tests about twice as slow. (Tools that set threads restore them.)
torch.set_num_threads(1)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# `--hypothesis-profile=fuzz`: the fuzz run of tests/api/test_fuzz.py (README, below the fast lane); registered
# here so that the option can name it (profiles must exist before test modules are imported).
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# The device the Triton path runs on: the GPU when there is one, else the CPU under the interpreter.
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"

# Both backends, as parameters of a test or fixture that runs on each: the Triton one runs Triton's kernels.
BACKENDS = ["torch_backend", pytest.param("triton_backend", marks=pytest.mark.interpret)]

_interpreted_launches = [0]


def _count_interpreted_launches() -> None:
    try:
        from triton.runtime.interpreter import GridExecutor
    except ImportError:  # another Triton layout: the marker check below is skipped
        return
    launch = GridExecutor.__call__

    def counted(self, *args, **kwargs):
        _interpreted_launches[0] += 1
        return launch(self, *args, **kwargs)

    GridExecutor.__call__ = counted


if not HAS_CUDA:
    _count_interpreted_launches()


@pytest.fixture(autouse=True)
def _interpret_marker_matches(request):
    before = _interpreted_launches[0]
    yield
    if _interpreted_launches[0] != before and request.node.get_closest_marker("interpret") is None:
        pytest.fail("this test ran Triton kernels in the interpreter: mark it @pytest.mark.interpret", pytrace=False)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def triton_backend():
    """Force tokennorm's Triton kernels for the test (they run in the interpreter on a CPU-only machine)."""
    import tokennorm

    with tokennorm.using_backend("triton"):
        yield KERNEL_DEVICE


@pytest.fixture
def torch_backend():
    import tokennorm

    with tokennorm.using_backend("torch"):
        yield


@pytest.fixture
def backend_from_environment(monkeypatch):
    """``setting(value)`` makes ``value`` the TOKENNORM_BACKEND tokennorm read at start-up (None: unset); the
    setting in force before the test comes back after it."""
    from tokennorm import backend

    saved = (backend._name, backend._error)

    def setting(value):
        if value is None:
            monkeypatch.delenv(backend.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(backend.ENV_VAR, value)
        backend._from_environment()

    yield setting
    backend._apply(*saved)


@pytest.fixture
def fake_gpu():
    """``fake_gpu(check)`` runs a check of tests/kernels/fake_gpu.py (real Triton launchers on CPU tensors under a
    fake CUDA driver, tokennorm.tools.kernel_report.fakecuda) in a process without Triton's interpreter and
    returns its JSON result."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import tokennorm

    def run(check: str, timeout: int = 600) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        package_root = str(Path(tokennorm.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        script = Path(__file__).parent / "kernels" / "fake_gpu.py"
        proc = subprocess.run(
            [sys.executable, str(script), check], capture_output=True, text=True, env=env, timeout=timeout
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
