"""``tokennorm audit`` names the module where a leak enters, reports progress, counts what it says it counts, and
answers bad command lines in one line (issue 14, item 10)."""

from __future__ import annotations

import builtins
import doctest
import sys

import pytest
import torch
from torch import nn

from tokennorm.cli import main as cli_main
from tokennorm.tools import audit as A
from tokennorm.transformer.norms import SequenceBatchNorm

pytestmark = pytest.mark.timeout(120)


class Block(nn.Module):
    """x + norm(causal running mean of a linear map of x): causal by construction unless the norm is not."""

    def __init__(self, channels: int, norm: nn.Module) -> None:
        super().__init__()
        self.mix = nn.Linear(channels, channels)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cumsum(self.mix(x), dim=1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
        return x + self.norm(h)


class Stack(nn.Module):
    """Four blocks; the second (``layers.1``) normalizes with BatchNorm, the others with LayerNorm."""

    def __init__(self, channels: int = 8, leaky_layer: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(channels, SequenceBatchNorm(channels) if i == leaky_layer else nn.LayerNorm(channels))
            for i in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _x(batch=2, length=8, channels=8):
    return torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def stack_report():
    torch.manual_seed(0)
    return A.audit(Stack(), _x())


@pytest.mark.parametrize("check", ["future", "cross_batch"])
def test_the_leak_is_attributed_to_the_batchnorm_in_layer_2_of_4(stack_report, check):
    f = stack_report.finding("train", check)
    assert f.leaks
    first = f.first_module
    assert (first.name, first.type) == ("layers.1.norm", "SequenceBatchNorm")
    names = [m.name for m in f.modules]
    # everything downstream shows it too, nothing upstream does
    assert names[:3] == ["layers.1.norm", "layers.1", "layers.2.mix"]
    assert not any(n.startswith("layers.0") or n == "layers.1.mix" for n in names)
    assert names[-1] == "<model>"
    # the model's own output, measured as a module output, is the model-level perturbation measurement
    assert f.modules[-1].magnitude == pytest.approx(f.perturbation.magnitude, rel=1e-12)


def test_eval_mode_is_clean_and_unattributed(stack_report):
    for check in ("future", "cross_batch"):
        f = stack_report.finding("eval", check)
        assert not f.leaks and f.modules == [] and f.first_module is None


def test_attribution_follows_the_leaky_layer():
    torch.manual_seed(0)
    report = A.audit(Stack(leaky_layer=3), _x(), modes=("train",))
    assert report.finding("train", "future").first_module.name == "layers.3.norm"


def test_a_leak_in_the_models_own_forward_is_attributed_to_the_model():
    class Leak(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            y = torch.cumsum(self.lin(x), 1)
            return y + x[:, -1:].expand_as(y)  # every position reads the last one: the future

    r = A.audit(Leak(), _x(channels=4), modes=("eval",))
    assert [m.name for m in r.finding("eval", "future").modules] == ["<model>"]


def test_modules_false_skips_attribution():
    torch.manual_seed(0)
    r = A.audit(Stack(), _x(), modes=("train",), modules=False)
    assert r.finding("train", "future").leaks and r.finding("train", "future").modules == []


def test_counts_say_how_many_pairs_were_measured(stack_report):
    f = stack_report.finding("train", "future")
    assert f.autograd.checked == 8 * 7 // 2  # every (t, s > t) pair: one Jacobian row per position
    assert f.perturbation.checked == 8 * 7 // 2  # 8 ≤ 16 columns: every column perturbed
    assert f.autograd.count == f.autograd.checked  # BatchNorm: every future pair leaks
    assert stack_report.finding("train", "cross_batch").autograd.checked == 2
    d = stack_report.to_dict()
    future = next(x for x in d["findings"] if x["mode"] == "train" and x["check"] == "future")
    assert future["autograd"]["checked"] == 28 and future["modules"][0]["name"] == "layers.1.norm"


def test_progress_reports_every_pass():
    calls = []
    torch.manual_seed(0)
    A.audit(Stack(), _x(), progress=lambda done, total, stage: calls.append((done, total, stage)))
    for mode in A.MODES:
        mine = [c for c in calls if c[2].startswith(mode)]
        assert [c[0] for c in mine] == list(range(1, len(mine) + 1))  # one call per pass, in order
        assert mine[-1][0] == mine[-1][1]  # ends at its total
        assert {c[2].split(": ")[1] for c in mine} >= {"forward", "autograd", "perturbation"}


def test_heatmap_has_a_legend_and_names_the_module(stack_report):
    fig = A.dependency_figure(stack_report)
    (legend,) = fig.legends
    labels = " | ".join(t.get_text() for t in legend.get_texts())
    for words in ("exactly 0", "not measured", "tolerance", "future", "strongest future leaks"):
        assert words in labels
    assert "layers.1.norm (SequenceBatchNorm)" in fig._suptitle.get_text()


@pytest.mark.slow  # audits the demo decoder twice (~3 s)
def test_the_docstring_example_is_what_audit_returns():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(A.audit, "audit", globs={}):
        runner.run(test)
    assert runner.tries >= 4 and runner.failures == 0


# ---------------------------------------------------------------------------------------------- the command


def _one_line_exit_2(argv, capsys, *words):
    assert cli_main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    return err


def test_help_states_the_causal_default(capsys):
    with pytest.raises(SystemExit):
        cli_main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "causal decoder" in text and "On by default" in text and "--no-causal" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_only_torch(capsys):
    _one_line_exit_2(["--demo", "layernorm", "--device", "cuda"], capsys, "--device cuda", "CUDA is not available")
    _one_line_exit_2(["--demo", "layernorm", "--device", "tpu"], capsys, "--device")


def test_a_class_needing_arguments(capsys):
    _one_line_exit_2(
        ["--model", "torch.nn:TransformerEncoderLayer", "--shape", "2,8,32"], capsys, "d_model", "--model-args"
    )
    _one_line_exit_2(
        ["--model", "torch.nn:Linear", "--model-args", "in_features=5,out_features", "--shape", "2,8,4"],
        capsys,
        "NAME=VALUE",
    )
    _one_line_exit_2(["--demo", "layernorm", "--model-args", "a=1"], capsys, "--model")


def test_model_args_construct_the_class(capsys):
    rc = cli_main(
        [
            "audit",
            "--model",
            "torch.nn:TransformerEncoderLayer",
            "--model-args",
            "d_model=16,nhead=2,dim_feedforward=32,batch_first=True,activation=gelu",
            "--shape",
            "2,6,16",
            "--no-causal",
            "--pad",
            "2",
            "--mask-arg",
            "src_key_padding_mask",
            "--mode",
            "eval",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "no leakage found" in captured.out and "passes" in captured.err  # progress went to stderr


def test_a_model_that_fails_on_the_input(capsys):
    _one_line_exit_2(
        ["--model", "torch.nn:Linear", "--model-args", "in_features=5,out_features=5", "--shape", "2,8,4"],
        capsys,
        "could not be audited",
        "RuntimeError",
    )


def test_table_counts_pairs_of_pairs_measured(capsys):
    assert cli_main(["audit", "--model", "torch.nn:Identity", "--shape", "2,6,4", "--mode", "eval"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 of 15" in out  # 6·5/2 future pairs, measured by both methods
    assert "of those the method measured" in out


def test_png_without_matplotlib(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    _one_line_exit_2(
        ["--model", "torch.nn:Identity", "--shape", "2,6,4", "--png", str(tmp_path / "h.png")], capsys, "matplotlib"
    )
