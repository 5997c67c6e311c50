"""``tokennorm demo``: the tiny char-level LM comparison, run through the CLI, and its data pipeline."""

import argparse
import hashlib
import json
import math

import pytest
import torch

from tokennorm import cli
from tokennorm.tools.demo import cli as demo_cli
from tokennorm.tools.demo import data as demo_data
from tokennorm.tools.demo import train

TINY = [
    "--d-model",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
    "--seq-len",
    "32",
    "--batch-size",
    "16",
    "--eval-interval",
    "20",
    "--eval-batches",
    "2",
    "--lr",
    "1e-2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    rc = cli.main(
        [
            "demo",
            "--steps",
            "60",
            "--out",
            str(out),
            "--seed",
            "3",
            "--configs",
            "layernorm-post,rmsnorm-pre,batchnorm-pre",
            *TINY,
        ]
    )
    return rc, out, json.loads((out / "results.json").read_text()), threads


def test_tiny_run_exits_0_and_writes_a_png(tiny_run):
    rc, out, _, _ = tiny_run
    assert rc == 0
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a real figure, not an empty canvas
    import matplotlib.image

    height, width = matplotlib.image.imread(out / "loss_curves.png").shape[:2]
    assert width > height > 200


def test_tiny_run_loss_decreases_for_every_config(tiny_run):
    _, _, results, _ = tiny_run
    assert [r["name"] for r in results["results"]] == ["layernorm-post", "rmsnorm-pre", "batchnorm-pre"]
    for r in results["results"]:
        assert r["diverged_at"] is None
        assert len(r["train_loss"]) == 60 and r["eval_steps"] == [0, 20, 40, 60]
        # an untrained model predicts near-uniformly over the 65 characters: loss ≈ ln 65 = 4.17
        assert r["eval_val"][0] == pytest.approx(math.log(65), abs=0.6), r["name"]
        assert r["final_val"] < r["eval_val"][0] - 0.6, r["name"]
        # below the text's unigram entropy (3.24 nats): the model uses context, not only letter frequencies
        # (these 60 steps reach ≈ 2.55; frequencies alone would stop at 3.24)
        assert r["final_val"] < 3.0, r["name"]
        assert r["final_train"] < r["eval_train"][0] - 0.6, r["name"]
        assert sum(r["train_loss"][-10:]) < sum(r["train_loss"][:10]) - 6.0, r["name"]


def test_tiny_run_restores_the_thread_setting(tiny_run):
    assert torch.get_num_threads() == tiny_run[3]


def test_a_config_trains_the_same_whatever_ran_before_it(tmp_path):
    # every config re-seeds its weights and its batch stream: rmsnorm-pre alone and rmsnorm-pre after
    # layernorm-pre must produce bit-identical losses (so the curves differ only by the norm and placement)
    args = ["--steps", "3", "--eval-interval", "3", *TINY]
    cli.main(["demo", "--out", str(tmp_path / "a"), "--configs", "rmsnorm-pre", *args])
    cli.main(["demo", "--out", str(tmp_path / "b"), "--configs", "layernorm-pre,rmsnorm-pre", *args])
    a = json.loads((tmp_path / "a" / "results.json").read_text())["results"][0]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["results"][1]
    assert a["name"] == b["name"] == "rmsnorm-pre"
    assert a["train_loss"] == b["train_loss"] and a["eval_val"] == b["eval_val"]  # independent of run order


def test_bad_configs_are_rejected_naming_the_entry(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--configs", "layernorm-pre,groupnorm-pre"])
    assert exc.value.code == 2
    assert "'groupnorm-pre'" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError, match="'layernorm-middle'"):
        demo_cli.parse_configs("layernorm-middle")
    with pytest.raises(argparse.ArgumentTypeError, match="twice"):
        demo_cli.parse_configs("rmsnorm-pre,rmsnorm-pre")
    assert demo_cli.parse_configs("none-post, batchnorm-pre") == (
        train.RunConfig("none", "post"),
        train.RunConfig("batchnorm", "pre"),
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_exits_2_with_a_message(tmp_path, capsys):
    assert cli.main(["demo", "--device", "cuda", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().out
    assert not (tmp_path / "results.json").exists()


def test_heads_must_divide_d_model(tmp_path, capsys):
    assert cli.main(["demo", "--d-model", "30", "--heads", "4", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "--d-model 30 and --heads 4" in capsys.readouterr().out


def test_corpus_is_the_documented_file():
    text = demo_data.load_corpus()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == (
        "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa"
    )
    assert len(text) == 151_922 and len(set(text)) == 65 and text.isascii()


def test_char_data_round_trips_and_batches_are_next_character_targets():
    data = demo_data.CharData.from_text("abcabcabd" * 10, val_fraction=0.2)
    assert data.vocab == ["a", "b", "c", "d"] and len(data.train) == 72 and len(data.val) == 18
    assert data.decode(torch.cat([data.train, data.val])) == "abcabcabd" * 10
    x, y = demo_data.sample_batch(data.train, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    text = data.decode(data.train)
    for row_x, row_y in zip(x, y):
        window = data.decode(row_x) + data.decode(row_y[-1:])
        assert window in text
    with pytest.raises(ValueError, match="seq_len=80"):
        demo_data.sample_batch(data.val, 1, 80, torch.Generator())


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    lrs = [train.lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
