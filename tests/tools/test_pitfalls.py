"""tokennorm.tools.explain.pitfalls: each mistake differs from LayerNorm exactly as the math says, and docs/pitfalls.md
shows the numbers the code computes."""

import math
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tokennorm import reference
from tokennorm.tools.explain import pitfalls

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pitfalls.md"
F64 = torch.float64


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_doc_table_is_what_the_code_measures():
    assert pitfalls.markdown_table(pitfalls.measure_all()) in DOC.read_text(encoding="utf-8")


@pytest.mark.slow
def test_module_main_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "tokennorm.tools.explain.pitfalls"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == pitfalls.markdown_table(pitfalls.measure_all())


def test_measurements_cover_every_pitfall_and_input():
    ms = pitfalls.measure_all()
    assert [(m.name, m.input_description) for m in ms] == [
        (p.name, s.description) for p in pitfalls.PITFALLS for s in pitfalls.STATED_INPUTS
    ]
    assert all(m.max_abs_difference > 0 and m.relative_difference > 0 for m in ms)


@pytest.mark.parametrize("c", [2, 4, 768])
def test_unbiased_std_shrinks_xhat_by_exactly_sqrt_c_over_c_minus_1(c):
    x = _randn(3, 5, c)
    right = reference.layer_norm(x, (c,), eps=0.0)
    wrong = pitfalls.layer_norm_unbiased_std(x, (c,), eps=0.0)
    torch.testing.assert_close(wrong * math.sqrt(c / (c - 1)), right, rtol=1e-13, atol=1e-13)
    m = pitfalls.measure(pitfalls.PITFALLS[0], x, eps=0.0)
    assert m.relative_difference == pytest.approx(1 - math.sqrt((c - 1) / c), rel=1e-10)
    assert m.relative_difference == pytest.approx(1 / (2 * c), rel=1 / c)  # ≈ 1/(2C), to first order


def test_unbiased_std_is_nan_for_one_feature():
    with pytest.warns(UserWarning, match="degrees of freedom"):
        assert torch.isnan(pitfalls.layer_norm_unbiased_std(_randn(3, 1), (1,))).all()


def test_eps_outside_sqrt_is_off_by_the_predicted_factor_per_token():
    x, eps = _randn(4, 6, 32) * torch.logspace(-4, 0, 6, dtype=F64)[:, None], 1e-5  # σ from 1e-4 to 1 per token
    sigma = x.var(dim=-1, correction=0, keepdim=True).sqrt()
    right = reference.layer_norm(x, (32,), eps=eps)
    wrong = pitfalls.layer_norm_eps_outside_sqrt(x, (32,), eps=eps)
    torch.testing.assert_close(wrong, right * torch.sqrt(sigma**2 + eps) / (sigma + eps), rtol=1e-12, atol=1e-12)


def test_eps_outside_sqrt_error_vanishes_with_eps_and_grows_as_variance_shrinks():
    p = pitfalls.PITFALLS[1]
    by_eps = [pitfalls.measure(p, _randn(2, 3, 768), eps=e).relative_difference for e in (1e-3, 1e-5, 1e-7, 1e-9)]
    assert by_eps == sorted(by_eps, reverse=True) and by_eps[-1] < 1e-8
    assert pitfalls.measure(p, _randn(2, 3, 768), eps=0.0).max_abs_difference == pytest.approx(0.0, abs=1e-14)
    by_scale = [pitfalls.measure(p, _randn(2, 3, 768, scale=s)).relative_difference for s in (1.0, 0.1, 0.01, 1e-3)]
    assert by_scale == sorted(by_scale) and by_scale[0] < 1e-5 and by_scale[-1] > 1.0


def test_eps_outside_sqrt_on_a_near_constant_token_as_the_doc_says():
    x = torch.full((1, 8), 3.0, dtype=F64)
    x[0, 0] += 1e-6
    ratio = pitfalls.layer_norm_eps_outside_sqrt(x, (8,)).abs().max() / reference.layer_norm(x, (8,)).abs().max()
    assert round(ratio.item()) == 306  # "306x larger"


def test_eps_outside_sqrt_gradient_is_nan_for_a_constant_token():
    x = torch.full((2, 8), 3.0, dtype=F64, requires_grad=True)
    pitfalls.layer_norm_eps_outside_sqrt(x, (8,)).sum().backward()
    assert torch.isnan(x.grad).all()
    xr = x.detach().clone().requires_grad_()
    F.layer_norm(xr, (8,)).sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_across_tokens_is_batchnorm_over_the_token_axes():
    x, w, b = _randn(2, 5, 16), _randn(16, seed=1), _randn(16, seed=2)
    want = F.batch_norm(x.reshape(-1, 16), None, None, w, b, training=True, eps=1e-5).reshape(x.shape)
    torch.testing.assert_close(pitfalls.norm_across_tokens(x, (16,), w, b), want, rtol=1e-12, atol=1e-12)


def test_only_cross_token_statistics_leak_between_tokens():
    x = _randn(2, 3, 64)
    assert pitfalls.other_token_change(reference.layer_norm, x, (64,)) == 0.0
    assert pitfalls.other_token_change(pitfalls.layer_norm_unbiased_std, x, (64,)) == 0.0
    assert pitfalls.other_token_change(pitfalls.layer_norm_eps_outside_sqrt, x, (64,)) == 0.0
    assert pitfalls.other_token_change(pitfalls.norm_across_tokens, x, (64,)) > 0.5


def test_wrong_variants_take_affine_and_multi_dim_shapes_like_f_layer_norm():
    x, w, b = _randn(3, 4, 5), _randn(4, 5, seed=1), _randn(4, 5, seed=2)
    torch.testing.assert_close(  # with ε = 0 the ε placement no longer matters
        pitfalls.layer_norm_eps_outside_sqrt(x, (4, 5), w, b, eps=0.0), F.layer_norm(x, (4, 5), w, b, eps=0.0)
    )
    y = pitfalls.layer_norm_unbiased_std(x, (4, 5), w, b, eps=0.0)
    torch.testing.assert_close((y - b) / w * math.sqrt(20 / 19), F.layer_norm(x, (4, 5), eps=0.0))


@pytest.mark.parametrize("fn", [p.function for p in pitfalls.PITFALLS])
def test_wrong_normalized_shape_is_a_clear_error(fn):
    with pytest.raises(ValueError, match=r"normalized_shape=\[5\].*size \[3, 4\]"):
        fn(_randn(3, 4), (5,))


def test_measure_leaves_its_input_unchanged():
    x = _randn(2, 3, 8)
    before = x.clone()
    for p in pitfalls.PITFALLS:
        pitfalls.measure(p, x)
    assert torch.equal(x, before)
