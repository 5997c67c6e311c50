"""``tokennorm explain --padding``: article 003's padded batch through LayerNorm and BatchNorm, and its z-score
example, checked against independent computations; and the explain command's edge cases (issue 14, item 9)."""

from __future__ import annotations

import builtins
import math
import subprocess
import sys

import pytest
import torch

from tokennorm.cli import main as cli_main
from tokennorm.tools.explain import padding


def test_the_batch_is_the_articles():
    ex = padding.padding_example()
    assert ex.x.shape == (2, 4, 8)
    assert ex.x[0, 1].tolist() == [0.5, 0.6, 0.7, 0.8, 0, 0, 0, 0]  # "love"
    assert ex.x[1, 3].tolist() == [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0]  # "models"
    assert ex.tokens[0][3] == "PAD" and ex.pad.tolist() == [[False, False, False, True], [False] * 4]
    assert not ex.x[0, 3].any()


def test_layernorm_and_batchnorm_against_hand_computation():
    ex = padding.padding_example(eps=1e-5)
    x = ex.x
    mean = x.sum(-1, keepdim=True) / 8
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 8  # per token, over its 8 channels
    torch.testing.assert_close(ex.layernorm, (x - mean) / torch.sqrt(var + 1e-5), rtol=1e-12, atol=1e-12)
    flat = x.reshape(8, 8)  # all 8 tokens (PAD included) of each channel
    mean_c = flat.sum(0) / 8
    var_c = ((flat - mean_c) ** 2).sum(0) / 8
    torch.testing.assert_close(ex.batchnorm, (x - mean_c) / torch.sqrt(var_c + 1e-5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ex.batchnorm_mean, mean_c, rtol=0, atol=1e-15)
    real = flat[[0, 1, 2, 4, 5, 6, 7]]  # the 7 real tokens
    torch.testing.assert_close(ex.batchnorm_mean_without_pad, real.mean(0), rtol=0, atol=1e-15)


def test_pad_moves_real_tokens_under_batchnorm_only():
    ex = padding.padding_example()
    assert ex.pad_shift["LayerNorm"] == 0.0  # exactly: per-token statistics never read the PAD row
    assert ex.pad_shift["BatchNorm"] > 0.1
    real = ~ex.pad
    diff = (ex.batchnorm - ex.batchnorm_without_pad)[real]
    assert diff.abs().max() > 0.1  # leaving PAD out of the statistics changes the real tokens' outputs
    assert torch.isnan(ex.batchnorm_without_pad[ex.pad]).all()


def test_z_score_is_the_articles():
    z = padding.z_score_example()
    assert z.mean == 5.0
    assert z.std == pytest.approx(math.sqrt(14 / 3)) and round(z.std, 2) == 2.16  # the article's σ: biased
    assert [round(v, 2) for v in z.z.tolist()] == [-0.46, 1.39, -0.93]
    assert z.std_unbiased == pytest.approx(math.sqrt(7))


def test_cli_padding_prints_the_numbers_and_draws(tmp_path, capsys):
    assert cli_main(["explain", "--padding", "--out", str(tmp_path), "--format", "png"]) == 0
    out = capsys.readouterr().out
    for text in ("Transformers", "models", "PAD", "+1.86", "2.160", "-0.463, 1.389, -0.926", "untouched", "moved"):
        assert text in out, text
    assert (tmp_path / "padding.png").stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------- issue 14, item 9


@pytest.mark.parametrize(
    "argv, nan_or_inf",
    [
        (["--shape", "2,3,1", "--groups", "1"], True),  # C = 1: LayerNorm's y is 0; the unbiased variance is NaN
        (["--shape", "2,2,4", "--scale", "0"], False),  # x = 0: y = 0 and every mistake agrees with it
        (["--shape", "1,1,1", "--groups", "1"], True),  # one element
    ],
)
def test_degenerate_inputs_are_explained_not_a_traceback(argv, nan_or_inf, capsys):
    assert cli_main(["explain", *argv]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "degrees of freedom" not in captured.err
    assert ("nan" in captured.out or "inf" in captured.out) == nan_or_inf


def test_figures_without_matplotlib_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for argv in (["--shape", "2,3,4", "--out", str(tmp_path)], ["--block", "--out", str(tmp_path)]):
        assert cli_main(["explain", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "matplotlib" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # a fresh interpreter (~3 s)
def test_explain_block_as_a_new_user_runs_it(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tokennorm", "explain", "--block", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "block.png").stat().st_size > 50_000 and (tmp_path / "block.svg").exists()


def test_block_with_an_unknown_norm_is_one_line_exit_2(tmp_path, capsys):
    assert cli_main(["explain", "--block", "--norm", "weightnorm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--norm" in err and "layernorm" in err
