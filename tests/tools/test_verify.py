"""``tokennorm verify``: exit codes, JSON contents, and that it catches a wrong op in every dtype."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import tokennorm
from tokennorm import cli, functional
from tokennorm.tools.explain import pitfalls
from tokennorm.tools.verify import cases, checks

DTYPES = [checks.dtype_name(d) for d in checks.supported_dtypes("cpu")]


def _verify(tmp_path, *args):
    path = tmp_path / "verify.json"
    rc = cli.main(["verify", "--device", "cpu", "--quick", "--json", str(path), *args])
    return rc, json.loads(path.read_text())


def _expected_tensors(op):
    forward = {"y", "h"} if op.prenorm else {"y"}
    if op.family == "ada_norm":  # issue 18's ops: every input's gradient
        return {"forward": forward, "backward": {"dx", "dresidual", "dshift", "dscale", "dgate"}}
    if op.family == "dyt":
        return {
            "forward": forward,
            "backward": {"dx", "dalpha", "dweight", "dbias"} | ({"dresidual"} if op.add else set()),
        }
    backward = (
        {"dx", "dweight"} | ({"dbias"} if op.norm == "layernorm" else set()) | ({"dresidual"} if op.add else set())
    )
    return {"forward": forward, "backward": backward}


def _assert_complete(doc, n_cases):
    seen = {}
    for r in doc["results"]:
        seen.setdefault((r["op"], r["direction"], r["dtype"]), set()).add((tuple(r["shape"]), r["tensor"]))
    for op in cases.OPS:
        for direction, tensors in _expected_tensors(op).items():
            for dtype in DTYPES:
                got = seen[(op.name, direction, dtype)]
                assert {t for _, t in got} == tensors, (op.name, direction, dtype)
                assert len({s for s, _ in got}) == n_cases
    assert len(seen) == len(cases.OPS) * 2 * len(DTYPES)


def test_in_process_all_pass_and_json_has_every_op_dtype_direction(tmp_path, capsys):
    rc, doc = _verify(tmp_path)
    assert rc == 0
    assert doc["passed"] is True and all(r["passed"] for r in doc["results"])
    _assert_complete(doc, len(cases.QUICK_CASES))
    for r in doc["results"]:
        assert 0 <= r["max_abs_error"] <= r["tolerance"]
    assert doc["device"] == "cpu" and doc["backend_used"] == "torch" and doc["torch"] == torch.__version__
    assert {"date", "triton", "tokennorm", "roundoffs"} <= doc.keys()
    assert f"all {doc['checks']} checks passed" in capsys.readouterr().out


@pytest.mark.slow
def test_subprocess_module_entry_point(tmp_path):
    path = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "TOKENNORM_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-m", "tokennorm", "verify", "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(path.read_text())
    assert doc["passed"] is True and all(r["passed"] for r in doc["results"])
    _assert_complete(doc, len(cases.QUICK_CASES))
    assert "checks passed" in proc.stdout


@pytest.mark.filterwarnings("ignore:var_mean")  # the unbiased variance of one element: NaN, and a failed check
@pytest.mark.parametrize("wrong", [p.function for p in pitfalls.PITFALLS], ids=[p.name for p in pitfalls.PITFALLS])
def test_each_classic_mistake_fails_in_every_dtype(tmp_path, capsys, monkeypatch, wrong):
    monkeypatch.setattr(functional, "layer_norm", wrong)
    rc, doc = _verify(tmp_path)
    assert rc == 1 and doc["passed"] is False
    failed = [r for r in doc["results"] if not r["passed"]]
    assert {r["op"] for r in failed} == {"layer_norm"}  # only the patched op, and nothing else
    assert {r["dtype"] for r in failed if r["direction"] == "forward"} == set(DTYPES)
    assert "FAILED" in capsys.readouterr().out


def test_an_error_of_a_few_hundred_float32_roundoffs_is_caught(tmp_path, monkeypatch):
    def off_by_2e_5(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        return F.layer_norm(input, normalized_shape, weight, bias, eps) * (1 + 2e-5)

    monkeypatch.setattr(functional, "layer_norm", off_by_2e_5)
    rc, doc = _verify(tmp_path)
    assert rc == 1
    failed = {(r["op"], r["dtype"]) for r in doc["results"] if not r["passed"]}
    # 2e-5 (in y and, through autograd, in every gradient) is ~335 float32 roundoffs but 1/200 of a bfloat16
    # one: the tolerance scales with the dtype.
    assert failed == {("layer_norm", "float64"), ("layer_norm", "float32")}


def test_an_op_that_raises_is_a_failed_check(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(functional, "rms_norm", broken)
    rc, doc = _verify(tmp_path)
    assert rc == 1
    failed = [r for r in doc["results"] if not r["passed"]]
    assert failed and all(r["op"] == "rms_norm" and "kernel exploded" in r["error"] for r in failed)
    assert "kernel exploded" in capsys.readouterr().out


def test_an_op_returning_the_wrong_dtype_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(functional, "layer_norm", lambda *args, **kwargs: F.layer_norm(*args, **kwargs).float())
    rc, doc = _verify(tmp_path)
    assert rc == 1
    failed = [r for r in doc["results"] if not r["passed"]]
    assert {r["dtype"] for r in failed} == set(DTYPES) - {"float32"}
    assert all(r["op"] == "layer_norm" and "expected torch." in r["error"] for r in failed)


def test_backend_option_is_scoped_to_the_run(tmp_path):
    before = tokennorm.get_backend()
    rc, doc = _verify(tmp_path, "--backend", "torch")
    assert rc == 0 and doc["backend"] == "torch"
    assert tokennorm.get_backend() == before


def test_triton_on_cpu_without_the_interpreter_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main(["verify", "--device", "cpu", "--backend", "triton", "--quick"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_bad_backend_in_the_environment_exits_2(backend_from_environment, capsys):
    backend_from_environment("cuda")
    assert cli.main(["verify", "--quick"]) == 2
    assert "TOKENNORM_BACKEND" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_requested_without_cuda_exits_2(capsys):
    assert cli.main(["verify", "--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.interpret
def test_triton_backend_is_the_one_checked(tmp_path, monkeypatch):
    """Under the interpreter (conftest) ``--backend triton`` must run the Triton kernels, not torch's."""
    from tokennorm.kernels import launch

    # each op family's forward launcher: the norms and AdaLN share the norm kernels
    launchers = {
        "norm": "norm_forward",
        "ada_norm": "norm_forward",
        "dyt": "dyt_forward",
        "channels_first": "channels_first_forward",
    }
    calls = {name: 0 for name in set(launchers.values())}
    for name in calls:
        real = getattr(launch, name)
        monkeypatch.setattr(
            launch,
            name,
            lambda *a, _real=real, _name=name, **k: calls.__setitem__(_name, calls[_name] + 1) or _real(*a, **k),
        )
    monkeypatch.setattr(cases, "QUICK_CASES", (cases.Case((3, 7)), cases.Case((5, 4, 6), normalized_ndim=2)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = tmp_path / "triton.json"
    rc = cli.main(["verify", "--device", device, "--backend", "triton", "--quick", "--json", str(path)])
    doc = json.loads(path.read_text())
    assert rc == 0 and doc["backend_used"] == "triton"
    dtypes = len(checks.supported_dtypes(device))
    expected = {name: 0 for name in calls}
    for op in cases.OPS:
        for case in cases.QUICK_CASES:
            # a 2-D [B, C] has no spatial dims: the channels-first op is the plain LayerNorm there
            family = "norm" if op.family == "channels_first" and len(case.shape) == 2 else op.family
            expected[launchers[family]] += dtypes
    assert calls == expected


@pytest.mark.gpu
@pytest.mark.interpret
def test_cuda_default_sweep_passes(tmp_path):
    path = tmp_path / "cuda.json"
    assert cli.main(["verify", "--device", "cuda", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["backend_used"] == "triton"
