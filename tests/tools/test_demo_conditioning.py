"""``tokennorm demo`` class-conditional runs (issue 18, item 5): per-sequence classes derived from the text, the
AdaLN-Zero model told the class against the same model given one class for all, and their plot."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tokennorm import cli
from tokennorm.tools.demo import cli as demo_cli
from tokennorm.tools.demo import data as D
from tokennorm.tools.demo import report, train

TINY = ["--steps", "4", "--eval-interval", "2", "--d-model", "16", "--layers", "1", "--heads", "2"]
TINY += ["--seq-len", "16", "--batch-size", "4", "--eval-batches", "1"]


@pytest.fixture(scope="module")
def text_and_data():
    text = D.load_corpus()
    return text, D.CharData.from_text(text)


def test_direction_classes_are_the_text_forwards_and_backwards(text_and_data):
    text, data = text_and_data
    classed = D.ClassedData.from_text(text, "direction", data)
    assert classed.classes == ["forwards", "backwards"]
    assert torch.equal(classed.train[1], data.train.flip(0)) and torch.equal(classed.val[0], data.val)
    x, y, classes = D.sample_classed_batch(classed.train, 16, 12, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 12) and classes.shape == (16,) and classes.dtype == torch.long
    assert set(classes.tolist()) == {0, 1}
    assert torch.equal(x[:, 1:], y[:, :-1])  # next-character targets
    forwards, backwards = data.decode(data.train), data.decode(data.train)[::-1]
    for row, target, c in zip(x, y, classes.tolist()):
        window = data.decode(torch.cat([row, target[-1:]]))
        assert window in (forwards if c == 0 else backwards)


def test_speaker_classes_are_each_speakers_own_lines(text_and_data):
    text, data = text_and_data
    classed = D.ClassedData.from_text(text, "speaker", data)
    assert len(classed.classes) == D.SPEAKERS and classed.classes[0] == "Lear" and "Fool" in classed.classes
    lengths = [len(s) + len(v) for s, v in zip(classed.train, classed.val)]
    assert lengths == sorted(lengths, reverse=True)  # the eight with the most lines, most first
    fool = data.decode(classed.train[classed.classes.index("Fool")])
    assert "Nuncle" in fool and "\nLear.\n" not in fool  # the speeches, not the speaker headings
    x, y, classes = D.sample_classed_batch(classed.val, 8, 20, torch.Generator().manual_seed(1))
    for row, c in zip(x, classes.tolist()):
        assert data.decode(row) in data.decode(classed.val[c])
    with pytest.raises(ValueError, match="signal"):
        D.ClassedData.from_text(text, "act", data)
    with pytest.raises(ValueError, match="seq_len=10000"):
        D.sample_classed_batch(classed.val, 2, 10_000, torch.Generator())


def test_what_each_config_is_told():
    classes = torch.tensor([1, 0, 1])
    assert torch.equal(train.RunConfig("layernorm", "pre", "adaln").classes(classes), classes)
    assert torch.equal(train.RunConfig("layernorm", "pre", "adaln-null").classes(classes), torch.zeros(3).long())
    assert train.RunConfig("layernorm", "pre").classes(classes) is None
    assert train.RunConfig("rmsnorm", "pre", "adaln").name == "rmsnorm-pre+adaln"


def test_config_syntax():
    assert demo_cli.parse_configs("layernorm-pre+adaln, rmsnorm-pre+adaln-null") == (
        train.RunConfig("layernorm", "pre", "adaln"),
        train.RunConfig("rmsnorm", "pre", "adaln-null"),
    )
    for bad, words in (
        ("layernorm-post+adaln", "placement pre"),
        ("dyt-pre+adaln", "placement pre and norm layernorm or rmsnorm"),
        ("layernorm-detached-pre+adaln", "cannot be conditioned"),
        ("layernorm-pre+film", "CONDITION in adaln, adaln-null"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            demo_cli.parse_configs(bad)


def test_a_conditioned_config_needs_classes(tmp_path, capsys):
    assert cli.main(["demo", "--configs", "layernorm-pre+adaln", "--out", str(tmp_path), *TINY]) == 2
    out = capsys.readouterr().out
    assert "--classes" in out and len(out.strip().splitlines()) == 1


def test_conditioning_preset_at_a_tiny_size(tmp_path, capsys):
    argv = ["demo", "--preset", "conditioning", "--classes", "speaker", "--out", str(tmp_path), *TINY]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    by_name = {r["name"]: r for r in results["results"]}
    told, null = by_name["layernorm-pre+adaln"], by_name["layernorm-pre+adaln-null"]
    # the same model from the same seed: at AdaLN-Zero's zero init the class changes nothing, so step 0 agrees
    assert told["eval_val"][0] == null["eval_val"][0] and told["parameters"] == null["parameters"]
    assert told["train_loss"] != null["train_loss"]  # then the class is used
    for r in results["results"]:
        assert len(r["val_by_position"]) == 16
    assert (tmp_path / "loss_curves.png").stat().st_size > 20_000
    out = " ".join(capsys.readouterr().out.split())
    assert "classes=speaker (Lear, Edg," in out
    assert "validation loss at positions 0-3 / 4 on: layernorm-pre+adaln-null" in out


def test_the_position_plot_has_a_third_panel():
    r = train.ConfigResult("layernorm-pre+adaln", "layernorm", "pre", 10, "adaln", steps=[1, 2])
    r.train_loss, r.eval_steps, r.eval_val, r.eval_val_train_mode = [3.0, 2.5], [0, 2], [3.1, 2.6], [3.1, 2.6]
    r.val_by_position = [3.0, 2.5, 2.4]
    fig = report.loss_figure([r], "title", "position")
    assert len(fig.axes) == 3 and "position" in fig.axes[2].get_title()
    assert fig.axes[2].get_legend().get_texts()[0].get_text() == "LayerNorm (pre), AdaLN-Zero, told the class"
