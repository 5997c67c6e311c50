"""tokennorm.tools.explain and ``tokennorm explain``: the groups drawn are the groups torch normalizes over, the
figures have one real panel per norm, and the walkthrough's numbers are torch's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib import image as mpimg

from tokennorm.cli import main as cli_main
from tokennorm.tools import explain as E

SHAPES = [(2, 3, 4), (3, 5, 6), (1, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", E.NORMS)
def test_groups_are_what_torch_normalizes_over(norm, shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    groups = E.stat_groups(norm, shape, num_groups=2)
    ours = E.normalize_by_groups(x, groups, centered=norm != "rmsnorm")
    torch.testing.assert_close(ours, E.torch_norm(norm, x, num_groups=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "norm, count",
    [
        ("layernorm", lambda b, n, c: b * n),
        ("rmsnorm", lambda b, n, c: b * n),
        ("batchnorm", lambda b, n, c: c),
        ("instancenorm", lambda b, n, c: b * c),
        ("groupnorm", lambda b, n, c: b * 2),
    ],
)
def test_group_counts(norm, count):
    b, n, c = 3, 5, 6
    groups = E.stat_groups(norm, (b, n, c), num_groups=2)
    assert groups.shape == (b, n, c) and groups.dtype == torch.long
    k = count(b, n, c)
    assert groups.unique().tolist() == list(range(k))
    assert torch.bincount(groups.flatten()).tolist() == [b * n * c // k] * k  # equal-sized groups


def test_per_token_norms_never_mix_tokens():
    shape = (2, 4, 6)
    for norm in E.NORMS:
        g = E.stat_groups(norm, shape)
        spans = max(len({(b, n) for b, n, _ in (g == k).nonzero().tolist()}) for k in range(int(g.max()) + 1))
        assert (spans == 1) == (norm in ("layernorm", "rmsnorm")), norm


def test_bad_groups():
    with pytest.raises(ValueError, match="num_groups"):
        E.stat_groups("groupnorm", (2, 3, 5), num_groups=2)
    with pytest.raises(ValueError, match="norm"):
        E.stat_groups("weightnorm", (2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        E.stat_groups("layernorm", (2, 3))


def test_groups_figure(tmp_path):
    b, n, c = 2, 3, 4
    fig = E.draw_groups((b, n, c), path=tmp_path / "g.png")
    axes = fig.get_axes()
    assert len(axes) == len(E.NORMS)
    for ax, norm in zip(axes, E.NORMS):
        # one coloured cell per element, labelled with the element's group: the labels, read back row by row,
        # are the groups torch normalizes over
        cells = [t for t in ax.texts if t.get_text().isdigit() and t.get_fontsize() > 6]
        assert len(cells) == b * n * c
        xs = sorted({t.get_position()[0] for t in cells})  # B blocks of C columns, left to right
        ys = sorted({t.get_position()[1] for t in cells})  # N rows, top to bottom

        def element(t):
            col, row = xs.index(t.get_position()[0]), ys.index(t.get_position()[1])
            return col // c, row, col % c

        labels = sorted(cells, key=element)
        expected = E.stat_groups(norm, (b, n, c)).flatten().tolist()
        assert [int(t.get_text()) for t in labels] == expected, norm
        assert len(ax.patches) == b * n * c
    img = mpimg.imread(tmp_path / "g.png")
    w, h = fig.get_size_inches() * 100
    assert img.shape[:2] == (round(h), round(w)) and img.shape[0] > 500
    assert img[..., :3].std() > 0.1  # coloured cells, not a blank canvas


def test_cube_figure_and_svg(tmp_path):
    fig = E.draw_cube((2, 3, 4), path=tmp_path / "c.svg")
    axes = fig.get_axes()
    assert len(axes) == len(E.NORMS) and all(ax.name == "3d" for ax in axes)
    text = (tmp_path / "c.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 50_000


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("affine", [False, True])
def test_walkthrough_equals_torch(dtype, affine):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
    weight = torch.randn(8, generator=g, dtype=torch.float64).to(dtype) if affine else None
    bias = torch.randn(8, generator=g, dtype=torch.float64).to(dtype) if affine else None
    w = E.walkthrough(x, 1e-5, weight, bias)
    xd = x.double()
    tol = dict(rtol=1e-12, atol=1e-12)
    # every step against an independent torch computation in float64
    var, mean = torch.var_mean(xd, dim=-1, correction=0)
    torch.testing.assert_close(w.mean, mean, **tol)
    torch.testing.assert_close(w.var, var, **tol)
    torch.testing.assert_close(w.rstd, torch.rsqrt(var + 1e-5), **tol)
    torch.testing.assert_close(w.xhat, F.layer_norm(xd, (8,), eps=1e-5), **tol)
    wd = None if weight is None else weight.double()
    bd = None if bias is None else bias.double()
    torch.testing.assert_close(w.y, F.layer_norm(xd, (8,), wd, bd, eps=1e-5), **tol)
    # torch in x's own dtype, as the walkthrough shows it
    assert w.torch_y.dtype == dtype
    torch.testing.assert_close(w.torch_y, F.layer_norm(x, (8,), weight, bias, eps=1e-5), rtol=0, atol=0)
    assert w.max_abs_diff <= w.tolerance()
    if dtype == torch.float64:
        assert w.max_abs_diff < 1e-13
        torch.testing.assert_close(w.torch_mean, w.mean, **tol)
        torch.testing.assert_close(w.torch_rstd, w.rstd, **tol)


def test_walkthrough_pitfall_errors():
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.003
    eps, c = 1e-5, 4
    w = E.walkthrough(x, eps)
    errs = {p.name: p for p in w.pitfalls}
    assert set(errs) == {"unbiased_std", "eps_outside_sqrt", "across_tokens"}
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    right = (x - mean) / torch.sqrt(var + eps)
    unbiased = (x - mean) / torch.sqrt(var * c / (c - 1) + eps)
    eps_out = (x - mean) / (torch.sqrt(var) + eps)
    for name, wrong in (("unbiased_std", unbiased), ("eps_outside_sqrt", eps_out)):
        assert math.isclose(errs[name].max_abs_error, (wrong - right).abs().max().item(), rel_tol=1e-9)
        assert errs[name].other_token_change == 0
    # σ² ≈ 9e-6 ≈ ε here, so ε's placement costs tens of percent
    assert errs["eps_outside_sqrt"].relative_error > 0.1
    assert errs["across_tokens"].other_token_change > 0


def test_cli_explain(tmp_path, capsys):
    assert (
        cli_main(["explain", "--shape", "2,3,4", "--seed", "1", "--affine", "--out", str(tmp_path), "--format", "both"])
        == 0
    )
    text = capsys.readouterr().out
    for word in ("LayerNorm", "GroupNorm", "rstd", "torch", "unbiased_std", "eps_outside_sqrt", "equal to torch"):
        assert word in text
    for name in ("norm_groups.png", "norm_groups.svg", "norm_cubes.png", "norm_cubes.svg"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert mpimg.imread(tmp_path / "norm_groups.png").shape[0] > 500
    assert cli_main(["explain", "--shape", "2,3,5"]) == 2  # GroupNorm's 2 groups do not divide C=5
    assert "--groups" in capsys.readouterr().err


def test_cli_random_shape_is_reproducible(capsys):
    assert cli_main(["explain", "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert cli_main(["explain", "--seed", "7"]) == 0
    assert capsys.readouterr().out == first and "randn[" in first
