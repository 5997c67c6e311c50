"""``tokennorm demo`` presets (depth, batchnorm, detach) at tiny sizes, LayerNorm with detached statistics, and loss
plots that stay readable when a run diverges."""

from __future__ import annotations

import argparse
import builtins
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from tokennorm import cli
from tokennorm.tools.demo import cli as demo_cli
from tokennorm.tools.demo import models, presets, report, train

TINY = [
    "--steps",
    "4",
    "--eval-interval",
    "2",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--eval-batches",
    "1",
]


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_runs_at_a_tiny_size(name, tmp_path, capsys):
    assert cli.main(["demo", "--preset", name, "--out", str(tmp_path), *TINY]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    preset = presets.PRESETS[name]
    assert results["preset"] == name and results["configs"] == list(preset.configs)
    for r in results["results"]:
        assert len(r["eval_val"]) == len(r["eval_val_train_mode"]) == 3  # steps 0, 2, 4
        if r["norm"] != "batchnorm":  # no dropout, no batch statistics: the two modes compute the same thing
            assert r["eval_val"] == pytest.approx(r["eval_val_train_mode"], rel=1e-5)
    assert (tmp_path / "loss_curves.png").stat().st_size > 20_000
    assert results["changed"] == [
        "steps",
        "d_model",
        "layers",
        "heads",
        "seq_len",
        "batch_size",
        "eval_interval",
        "eval_batches",
    ]
    out = " ".join(capsys.readouterr().out.split())
    assert f"{name} preset with --steps, --d-model" in out  # its note assumes its own settings: not printed
    assert preset.note[:40] not in out


def test_settings_come_from_the_option_then_the_preset_then_the_base():
    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    args = demo_cli.resolve_settings(parser.parse_args(["--preset", "depth", "--lr", "5e-4"]))
    assert args.lr == 5e-4 and args.layers == presets.PRESETS["depth"].settings["layers"]
    assert args.steps == presets.BASE["steps"]
    assert [c.name for c in args.configs] == list(presets.PRESETS["depth"].configs)
    default = demo_cli.resolve_settings(parser.parse_args([]))
    assert default.preset == presets.DEFAULT_PRESET
    assert set(presets.BASE) <= set(vars(default)) and all(
        getattr(default, k) is not None or k in ("warmup", "classes") for k in presets.BASE
    )


def test_the_note_is_printed_when_the_preset_runs_as_defined():
    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    for name, preset in presets.PRESETS.items():
        args = demo_cli.resolve_settings(parser.parse_args(["--preset", name, "--configs", ",".join(preset.configs)]))
        assert args.changed == () and preset.note in demo_cli.closing_note(args)
    args = demo_cli.resolve_settings(parser.parse_args(["--configs", "rmsnorm-pre"]))
    assert args.changed == ("configs",) and "--configs changed" in demo_cli.closing_note(args)


def test_every_preset_config_names_a_registered_norm():
    for p in presets.PRESETS.values():
        assert demo_cli.parse_configs(",".join(p.configs))
        assert set(p.settings) <= set(presets.BASE)


# ---------------------------------------------------------------------------------------------- detached statistics


def test_detached_layernorm_forward_is_layernorm_and_backward_drops_the_statistics_terms():
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 5, 16, generator=g, dtype=torch.float64) + 1).requires_grad_(True)
    dy = torch.randn(4, 5, 16, generator=g, dtype=torch.float64)
    norm = models.DetachedStatsLayerNorm(16, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(16, generator=g, dtype=torch.float64))
    y = norm(x)
    torch.testing.assert_close(y, F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-5), rtol=1e-12, atol=1e-12)
    (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.detach()
    rstd = 1 / torch.sqrt(xd.var(-1, correction=0, keepdim=True) + 1e-5)
    torch.testing.assert_close(dx, rstd * dy * norm.weight, rtol=1e-12, atol=1e-12)  # ∂L/∂x = rstd · g only
    (dx_ln,) = torch.autograd.grad(F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-5), x, dy)
    assert (dx - dx_ln).abs().max() > 1e-2  # LayerNorm's full gradient differs: the detached terms matter


def test_detached_model_starts_from_the_layernorm_models_weights():
    kw = dict(d_model=16, nhead=2, num_layers=2, max_len=8, dropout=0.0)
    for placement in ("post", "pre"):
        torch.manual_seed(0)
        ln = models.build_model("layernorm", placement, 11, **kw)
        torch.manual_seed(0)
        det = models.build_model("layernorm-detached", placement, 11, **kw)
        from tokennorm.modules import AddNorm

        assert not any(
            isinstance(m, (AddNorm, torch.nn.LayerNorm)) and not isinstance(m, models.DetachedStatsLayerNorm)
            for m in det.modules()
        )
        assert sum(isinstance(m, models.DetachedStatsLayerNorm) for m in det.modules()) == (
            4 if placement == "post" else 5
        )  # 2 per layer, plus pre-LN's final norm
        assert [p.tolist() for p in ln.parameters()] == [p.tolist() for p in det.parameters()]
        tokens = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(det(tokens), ln(tokens), rtol=1e-5, atol=1e-5)


def test_evaluate_in_training_mode_leaves_the_model_and_rng_as_found():
    torch.manual_seed(0)
    model = models.build_model("batchnorm", "post", 11, d_model=16, nhead=2, num_layers=1, max_len=8, dropout=0.1)
    model.eval()
    batches = [(torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    train_mode = train.evaluate(model, batches, torch.device("cpu"), train_mode=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics kept
    assert torch.equal(rng, torch.get_rng_state()) and not model.training
    assert train_mode != train.evaluate(model, batches, torch.device("cpu"))  # batch vs running statistics


# ---------------------------------------------------------------------------------------------- divergence


def _result(name, values, diverged_at=None):
    norm, _, placement = name.rpartition("-")
    r = train.ConfigResult(name, norm, placement, 1)
    r.steps = list(range(1, len(values) + 1))
    r.train_loss = values
    r.eval_steps, r.eval_val, r.eval_train = [0, 2], [values[0], values[1]], [values[0], values[1]]
    r.eval_val_train_mode = list(r.eval_val)
    r.diverged_at = diverged_at
    return r


def test_a_diverging_run_does_not_flatten_the_others():
    stable = _result("layernorm-pre", [4.2, 3.0, 2.6, 2.4])
    diverging = _result("none-pre", [180.0, 3.5, 6.6e6, math.inf], diverged_at=4)
    fig = report.loss_figure([stable, diverging], "t", vocab_size=65)
    for ax in fig.axes:
        assert ax.get_ylim()[1] < 5.0  # a little above chance (ln 65 = 4.17), not 6.6e6
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "diverged at step 4" in texts
    markers = {line.get_marker() for ax in fig.axes for line in ax.lines}
    assert {"X", "^"} <= markers  # the divergence and the clipped values are marked
    table = report.results_table([stable, diverging], "t")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    assert "diverged at step 4" in console.export_text()


def test_demo_without_matplotlib_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert cli.main(["demo", "--out", str(tmp_path), *TINY]) == 2
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and "matplotlib" in out
    assert not (tmp_path / "results.json").exists()
