"""``tokennorm audit`` with a per-item condition (AdaLN-Zero's c, a class per sequence): each item is given its
own, the ``condition`` check finds an item that depends on another item's condition and names the module, and
the DyT and AdaLN demos are clean (issue 18, item 5)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tokennorm import AdaLNZero
from tokennorm.cli import main as cli_main
from tokennorm.tools import audit as A
from tokennorm.transformer import EncoderLayer

pytestmark = pytest.mark.timeout(120)


class BatchMeanAdaLN(AdaLNZero):
    """The deliberate bug: every item is modulated by the batch mean of the conditions, not by its own."""

    def forward(self, cond):
        return super().forward(cond.mean(0, keepdim=True).expand_as(cond))


def _text(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("demo", ["dyt", "adaln"])
def test_the_demos_are_clean_and_say_how_they_were_conditioned(demo, capsys, tmp_path):
    assert cli_main(["audit", "--demo", demo, "--json", str(tmp_path / "r.json")]) == 0
    out = _text(capsys)
    assert "no leakage found" in out
    report = json.loads((tmp_path / "r.json").read_text())
    checks = {(f["mode"], f["check"]) for f in report["findings"]}
    if demo == "adaln":
        assert "condition: classes=[0, 1], one per batch item, each item its own" in out
        assert {("train", "condition"), ("eval", "condition")} <= checks
        assert report["condition"]["values"] == [0, 1] and report["condition"]["arg"] == "classes"
        assert min(report["condition"]["own"].values()) > 0.1  # the check is not vacuous
    else:
        assert "condition" not in out and report["condition"] is None
        assert {"future", "cross_batch", "padding"} == {c for _, c in checks}


@pytest.fixture(scope="module")
def mixed_report():
    model = A.demo_model("adaln")
    model.decoder.layers[1].adaln.__class__ = BatchMeanAdaLN  # same weights, the bug in layer 2 of 2
    tokens, pad = A.demo_inputs()
    return A.audit(model, tokens, key_padding_mask=pad, condition=A.demo_condition("adaln"), condition_arg="classes")


@pytest.mark.parametrize("mode", A.MODES)
def test_a_condition_mixed_across_the_batch_is_caught_and_attributed(mixed_report, mode):
    f = mixed_report.finding(mode, "condition")
    assert f.leaks and f.agree  # both methods see it
    assert f.autograd.magnitude > 1e-3 and f.perturbation.magnitude > 1e-3
    assert sorted(f.autograd.where) == [(0, 1), (1, 0)]
    # in eval mode the padded item's output is NaN (its PAD queries see no key, NaN as torch gives, and the NaN
    # spreads), so perturbation sees only item 0 move; autograd, whose pass needs a gradient, sees both
    assert (0, 1) in f.perturbation.where
    # where it enters: the AdaLN module (its input, the class embedding, is per item; its shift, scale and gate
    # are not), not the Linear inside it, whose input already mixes the items
    assert f.first_module.name.startswith("decoder.layers.1.adaln[") and f.first_module.type == "BatchMeanAdaLN"
    assert not any(m.name.startswith(("decoder.layers.0", "class_embedding")) for m in f.modules)
    # the token-level checks cannot see it: the batch mean of the conditions does not depend on any token
    for check in ("future", "cross_batch", "padding"):
        assert not mixed_report.finding(mode, check).leaks


def test_the_command_reports_the_mixing(capsys, monkeypatch):
    from tokennorm.tools.audit import demos

    real = demos.demo_model

    def mixed(norm, **kwargs):
        model = real(norm, **kwargs)
        if norm == "adaln":
            model.decoder.layers[0].adaln.__class__ = BatchMeanAdaLN
        return model

    monkeypatch.setattr(demos, "demo_model", mixed)
    assert cli_main(["audit", "--demo", "adaln", "--mode", "eval"]) == 1
    out = _text(capsys)
    assert "condition (eval): first appears in the output of decoder.layers.0.adaln[0] (BatchMeanAdaLN" in out
    assert "leakage found: condition (eval)" in out


def _encoder_layer(randomize: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, dropout=0.0, placement="pre", cond_dim=8)
    if randomize:
        with torch.no_grad():
            layer.adaln.linear.weight.normal_(0.0, 0.3)
    return layer


def test_a_floating_condition_at_zero_init_is_reported_as_vacuous():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    c = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    zero = A.audit(_encoder_layer(False), x, causal=False, condition=c)
    assert not zero.leaks and zero.condition.own == {"train": 0.0, "eval": 0.0}
    trained = A.audit(_encoder_layer(True), x, causal=False, condition=c)
    assert not trained.leaks and min(trained.condition.own.values()) > 0.1
    assert trained.condition.shape == (2, 8) and trained.condition.values is None
    mixed = _encoder_layer(True)
    mixed.adaln.__class__ = BatchMeanAdaLN
    f = A.audit(mixed, x, causal=False, condition=c, modes=("eval",)).finding("eval", "condition")
    assert f.leaks and f.first_module.name.startswith("adaln[") and f.first_module.type == "BatchMeanAdaLN"


def test_the_command_warns_when_the_condition_is_ignored(capsys):
    rc = cli_main(
        [
            "audit",
            "--model",
            "tokennorm.transformer:EncoderLayer",
            "--model-args",
            "d_model=16,nhead=2,dim_feedforward=32,placement=pre,cond_dim=8",
            "--shape",
            "2,5,16",
            "--no-causal",
            "--cond-dim",
            "8",
            "--mode",
            "eval",
        ]
    )
    assert rc == 0
    out = _text(capsys)
    assert "cond of shape [2, 8]" in out and "the condition check is vacuous" in out


def test_bad_conditions(capsys):
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"condition must have one entry per batch item"):
        A.audit(nn.Identity(), x, causal=False, condition=torch.zeros(3, 8))
    with pytest.raises(TypeError, match="condition must be floating or integer"):
        A.audit(nn.Identity(), x, causal=False, condition=torch.zeros(2, dtype=torch.bool))

    class Ignores(nn.Module):
        def forward(self, x, cond=None):
            return 2 * x

    with pytest.raises(TypeError, match="looks it up in an nn.Embedding"):
        A.audit(Ignores(), x, causal=False, condition=torch.tensor([0, 1]))
    for argv, words in (
        (["--demo", "layernorm", "--cond-arg", "classes"], ("--cond-arg needs a condition",)),
        (["--demo", "adaln", "--cond-classes", "0"], ("--cond-classes must be positive",)),
        (["--demo", "layernorm", "--cond-classes", "4"], ("could not be audited", "'cond'")),
    ):
        assert cli_main(["audit", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(w in err for w in words), err


def test_outputs_that_are_nan_before_any_perturbation_are_reported(capsys):
    # eval mode without a graph: the 4 left-PAD queries of item 1 have no key (NaN, as torch gives), and the NaN
    # reaches every position of item 1 through the next layer's attention; perturbation cannot see those move
    tokens, pad = A.demo_inputs()
    report = A.audit(A.demo_model("layernorm"), tokens, key_padding_mask=pad)
    assert report.nonfinite == {"eval": 16} and report.to_dict()["nonfinite_outputs"] == {"eval": 16}
    assert cli_main(["audit", "--demo", "layernorm", "--mode", "eval"]) == 0
    assert "eval: 16 of 32 output positions are NaN or inf before any perturbation" in _text(capsys)
    assert A.audit(A.demo_model("layernorm"), A.demo_inputs(pad=0)[0]).nonfinite == {}
