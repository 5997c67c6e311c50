"""``tokennorm verify`` on issue 18's ops: a wrong AdaLN modulation, a DyT that drops α from the gradient, or a
channels-first norm over the wrong dim fails exactly that op."""

import json

import pytest
import torch

from tokennorm import adaptive, channels_first, cli, dynamic_tanh


def _failed_ops(tmp_path):
    path = tmp_path / "verify.json"
    rc = cli.main(["verify", "--device", "cpu", "--quick", "--json", str(path)])
    return rc, {r["op"] for r in json.loads(path.read_text())["results"] if not r["passed"]}


def test_verify_fails_a_wrong_modulation(tmp_path, monkeypatch):
    real = adaptive.ada_norm

    def scale_without_one(x, shift, scale, **kw):  # y = Norm(h)·scale + shift: the classic AdaLN slip
        return real(x, shift, scale - 1, **kw)

    monkeypatch.setattr(adaptive, "ada_norm", scale_without_one)
    assert _failed_ops(tmp_path) == (1, {"ada_norm(ln, pre)", "ada_norm(rms, pre)"})


def test_verify_fails_a_dyt_whose_alpha_gets_no_gradient(tmp_path, monkeypatch):
    real = dynamic_tanh.dyt
    monkeypatch.setattr(dynamic_tanh, "dyt", lambda x, alpha, w=None, b=None: real(x, alpha.detach(), w, b))
    assert _failed_ops(tmp_path) == (1, {"dyt"})


@pytest.mark.filterwarnings("ignore:var")  # the unbiased variance of one channel: NaN, and a failed check
def test_verify_fails_a_channels_first_norm_with_the_unbiased_variance(tmp_path, monkeypatch):
    def unbiased(x, weight, bias, eps=1e-5):
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        u, v = x.mean(1, keepdim=True), x.var(1, keepdim=True)
        return ((x - u) / torch.sqrt(v + eps) * weight.view(per_channel) + bias.view(per_channel)).to(x.dtype)

    monkeypatch.setattr(channels_first, "channels_first_layer_norm", unbiased)
    assert _failed_ops(tmp_path) == (1, {"channels_first_layer_norm"})
