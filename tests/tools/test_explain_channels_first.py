"""``tokennorm explain --layout channels-first``: the statistics groups of x [B, C, H, W] under channels-first
LayerNorm, BatchNorm2d, InstanceNorm2d and GroupNorm are the ones torch's modules compute (their outputs, and which
outputs move when one element of x does), the figure labels every drawn cell with that group at a bounded size,
and DyT is shown as what it is: no statistics at all."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from matplotlib import image as mpimg
from test_explain_figures import _assert_readable
from torch import nn

import tokennorm
from tokennorm.cli import main as cli_main
from tokennorm.tools.explain import block, figures, groups

IMAGE_NORMS = groups.IMAGE_NORMS
SHAPES = [(2, 4, 3, 3), (3, 6, 2, 5), (1, 2, 1, 2)]
HUGE = (4096, 65536, 1024, 1024)  # 2.8e14 elements: nothing of this size may be built


def _modules(norm: str, channels: int, num_groups: int = 2) -> list[nn.Module]:
    """The modules users run for ``norm``, affine off, in training mode: torch's own, and for channels-first
    LayerNorm both timm's way (permute around nn.LayerNorm) and tokennorm's ChannelsFirstLayerNorm."""
    if norm == "channels_first_layernorm":
        layer_norm = nn.LayerNorm(channels, elementwise_affine=False)

        class LayerNorm2d(nn.Module):  # timm's LayerNorm2d
            def forward(self, x):
                return layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        return [LayerNorm2d(), tokennorm.ChannelsFirstLayerNorm(channels, elementwise_affine=False)]
    return [
        {
            "batchnorm2d": lambda: nn.BatchNorm2d(channels, affine=False),
            "instancenorm2d": lambda: nn.InstanceNorm2d(channels),
            "groupnorm2d": lambda: nn.GroupNorm(num_groups, channels, affine=False),
        }[norm]()
    ]


def test_the_image_norms_are_registered_for_their_layout():
    assert IMAGE_NORMS == ("channels_first_layernorm", "batchnorm2d", "instancenorm2d", "groupnorm2d")
    assert not set(IMAGE_NORMS) & set(groups.NORMS)
    for name in IMAGE_NORMS:
        assert groups.NORM_SPECS[name].layout is groups.CHANNELS_FIRST
    assert groups.norms_of(groups.CHANNELS_FIRST) == IMAGE_NORMS and groups.norms_of(groups.CHANNELS_LAST) == (
        groups.NORMS
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", IMAGE_NORMS)
def test_groups_reproduce_the_modules_outputs(norm, shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    ours = groups.normalize_by_groups(x, groups.stat_groups(norm, shape, 2), eps=1e-5)
    for module in _modules(norm, shape[1]):
        torch.testing.assert_close(ours, module.double().train()(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, groups.torch_norm(norm, x, num_groups=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", IMAGE_NORMS)
def test_one_element_moves_exactly_the_outputs_of_its_group(norm):
    # independent of normalize_by_groups: perturb x[e] and see which outputs of torch's module change; those are
    # the elements that share e's mean and variance
    shape = (2, 4, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ids = groups.stat_groups(norm, shape, 2)
    for module in _modules(norm, shape[1]):
        module = module.double().train()
        y = module(x)
        for e in [(0, 0, 0, 0), (1, 3, 2, 1), (0, 2, 1, 0), (1, 1, 0, 1)]:
            x2 = x.clone()
            x2[e] += 1.5
            moved = (module(x2) - y).abs() > 1e-9
            torch.testing.assert_close(moved, ids == ids[e], msg=f"{norm}, element {e}")


@pytest.mark.parametrize("norm", IMAGE_NORMS)
def test_mixes_is_what_a_perturbation_shows(norm):
    # "mixes pixels?" / "mixes images?" in the table: does moving one element move another pixel, another image?
    shape = groups.CHANNELS_FIRST.probe_shape(2)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (module, *_) = _modules(norm, shape[1])
    module = module.double().train()
    other_pixel = other_image = False
    for e in [tuple(i) for i in torch.cartesian_prod(*(torch.arange(s) for s in shape)).tolist()]:
        x2 = x.clone()
        x2[e] += 1.0
        moved = ((module(x2) - module(x)).abs() > 1e-9).nonzero().tolist()
        other_pixel |= any((b, h, w) != (e[0], e[2], e[3]) for b, _, h, w in moved)
        other_image |= any(b != e[0] for b, *_ in moved)
    assert groups.mixes(norm, 2) == (other_pixel, other_image)


def test_dyt_has_no_statistics():
    # DyT's table row says "each element alone": moving one element moves only its own output
    shape = (2, 3, 4)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dyt = tokennorm.DyT(4).double()
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        dyt.bias.uniform_(-1, 1)
        y = dyt(x)
        for e in [(0, 0, 0), (1, 2, 3)]:
            x2 = x.clone()
            x2[e] += 1.0
            moved = (dyt(x2) - y).abs() > 0
            assert moved.nonzero().tolist() == [list(e)]
    op = groups.ELEMENTWISE["dyt"]
    assert op.over == "none: elementwise γ·tanh(α·x) + β, each element alone"
    for call in (lambda: groups.stat_groups("dyt", shape), lambda: groups.group_count("dyt", shape)):
        with pytest.raises(ValueError, match="norm='dyt' has no statistics to group"):
            call()
    with pytest.raises(ValueError, match="no statistics"):
        block.draw_block("dyt")


@pytest.mark.parametrize("norm", IMAGE_NORMS)
def test_group_counts_and_order(norm):
    shape = (3, 6, 2, 5)
    ids = groups.stat_groups(norm, shape, 2)
    k, each = groups.group_count(norm, shape, 2)
    assert ids.shape == shape and ids.dtype == torch.long
    assert ids.unique().tolist() == list(range(k)) and torch.bincount(ids.flatten()).tolist() == [each] * k
    first_seen = list(dict.fromkeys(ids.flatten().tolist()))
    assert first_seen == list(range(k))  # NormSpec.key's contract, on which the figures' cheap ids rely
    expected = {"channels_first_layernorm": 3 * 2 * 5, "batchnorm2d": 6, "instancenorm2d": 3 * 6, "groupnorm2d": 3 * 2}
    assert k == expected[norm]
    # cheap on a huge shape: the last element has the last id
    k_huge, _ = groups.group_count(norm, HUGE, 2)
    last = groups.group_ids(norm, HUGE, *(torch.tensor(s - 1) for s in HUGE), num_groups=2)
    assert int(last) == k_huge - 1


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"shape must be \[B, C, H, W\]"):
        groups.stat_groups("batchnorm2d", (2, 3, 4))
    with pytest.raises(ValueError, match=r"shape must be \[B, N, C\]"):
        groups.stat_groups("batchnorm", (2, 3, 4, 4))
    with pytest.raises(ValueError, match="num_groups must divide"):
        groups.stat_groups("groupnorm2d", (2, 5, 2, 2), 2)
    with pytest.raises(ValueError, match="one index tensor per dim"):
        groups.group_ids("batchnorm2d", (2, 4, 2, 2), torch.tensor(0), torch.tensor(0), torch.tensor(0))
    with pytest.raises(ValueError, match=r"takes x \[B, C, H, W\]"):
        block.draw_block("batchnorm2d")
    with pytest.raises(ValueError, match="norms must take x"):
        figures.draw_image_groups((2, 4, 2, 2), norms=("layernorm",))


# ---------------------------------------------------------------------------------------------- figure


def _cell_labels(ax):
    return [t for t in ax.texts if t.get_text().isdigit() and t.get_color() == "black" and t.get_fontsize() <= 6.5]


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (3, 10, 6, 5)])
def test_figure_labels_every_drawn_cell_with_its_group(shape):
    fig = figures.draw_image_groups(shape)
    assert len(fig.axes) == len(IMAGE_NORMS)
    bs, cs, hs, ws = (figures.shown_indices(size, limit) for size, limit in zip(shape, figures.SHOWN_IMAGE))
    for ax, norm in zip(fig.axes, IMAGE_NORMS):
        labels = _cell_labels(ax)
        assert len(labels) == len(ax.patches) == sum(None not in i for i in _product(bs, cs, hs, ws))
        # read back by position: rows top to bottom are (image b, pixel row h), columns left to right (channel c,
        # pixel column w), so the labels sorted by (y, x) are the groups of x.permute(0, 2, 1, 3) row by row
        read = [int(t.get_text()) for t in sorted(labels, key=lambda t: (t.get_position()[1], t.get_position()[0]))]
        ids = groups.stat_groups(norm, shape, 2)
        keep = [[i for i in idx if i is not None] for idx in (bs, cs, hs, ws)]
        drawn = ids[keep[0]][:, keep[1]][:, :, keep[2]][:, :, :, keep[3]]
        assert read == drawn.permute(0, 2, 1, 3).flatten().tolist(), norm


def _product(*axes):
    import itertools

    return itertools.product(*axes)


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), HUGE])
def test_figure_is_bounded_and_readable(shape, tmp_path):
    fig = figures.draw_image_groups(shape, path=tmp_path / "g.png")
    width, height = fig.get_size_inches()
    assert width <= 17 and height <= 12
    if shape == HUGE:  # past SHOWN_IMAGE on every axis, a larger shape draws the same cells and gaps
        assert tuple(fig.get_size_inches()) == tuple(figures.draw_image_groups((3, 10, 5, 5)).get_size_inches())
    _assert_readable(fig)
    img = mpimg.imread(tmp_path / "g.png")
    assert abs(img.shape[0] - height * 100) <= 1 and abs(img.shape[1] - width * 100) <= 1
    assert img[..., :3].std() > 0.1  # coloured cells, not a blank canvas
    title = fig._suptitle.get_text()
    assert "x [B=2, C=8, H=4, W=4]" in title or "B=4,096" in title
    assert "colours repeat" in title  # LayerNorm's 32 pixels are more groups than colours


def test_figure_counts_what_its_gaps_leave_out():
    texts = [t.get_text() for t in figures.draw_image_groups((3, 12, 6, 6), norms=("batchnorm2d",)).axes[0].texts]
    assert "⋮   1 more image   ⋮" in texts and "⋯ 7 more" in texts  # images 1; channels 4..10
    texts = [t.get_text() for t in figures.draw_image_groups((9, 4, 2, 2), norms=("batchnorm2d",)).axes[0].texts]
    assert "⋮   7 more images   ⋮" in texts


def test_figure_of_few_groups_says_same_colour():
    fig = figures.draw_image_groups((2, 4, 2, 2), norms=("batchnorm2d", "groupnorm2d"))
    assert "same number (and colour) = same group" in fig._suptitle.get_text()
    assert len(fig.axes) == 2


# ---------------------------------------------------------------------------------------------- command


def test_cli_channels_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    argv = ["explain", "--layout", "channels-first", "--shape", "2,8,4,4", "--out", str(tmp_path), "--format", "both"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    for word in (
        "[B=2, C=8, H=4, W=4]",
        "LayerNorm, channels first",
        "per pixel, over C",
        "BatchNorm2d",
        "InstanceNorm2d",
        "GroupNorm (G=2)",
        "mixes pixels?",
        "mixes images?",
        "none: elementwise γ·tanh(α·x) + β, each element alone",
        "equal to torch",
    ):
        assert word in text, word
    assert "DIFFERENT" not in text
    assert mpimg.imread(tmp_path / "image_groups.png").shape[0] > 500
    assert (tmp_path / "image_groups.svg").read_text().lstrip().startswith("<?xml")
    assert not (tmp_path / "norm_groups.png").exists()


def test_cli_layout_names_are_the_registrys():
    # the command lists them without importing torch (tokennorm --help); the registry is in groups
    from tokennorm.tools.explain import cli

    assert cli.LAYOUT_NAMES == tuple(groups.LAYOUTS)


def test_cli_checks_with_the_eps_asked_for(capsys, monkeypatch):
    # x = 0.001 · randn: σ² ≈ 1e-6, so ε = 0.1 decides every output; both sides of the check use it
    monkeypatch.setenv("COLUMNS", "250")
    seen = []
    for name in ("normalize_by_groups", "torch_norm"):
        real = getattr(groups, name)

        def spy(first, second, eps, *rest, real=real, name=name, **kwargs):  # (x, ids, …) or (norm, x, …)
            seen.append((name, eps))
            return real(first, second, eps, *rest, **kwargs)

        monkeypatch.setattr(groups, name, spy)
    argv = ["explain", "--layout", "channels-first", "--shape", "2,4,3,3", "--scale", "0.001", "--eps", "0.1"]
    assert cli_main(argv) == 0
    assert "equal to torch" in capsys.readouterr().out
    assert sorted(set(seen)) == [("normalize_by_groups", 0.1), ("torch_norm", 0.1)] and len(seen) == 8


def test_cli_channels_first_checks_a_corner_of_a_large_shape(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_main(["explain", "--layout", "channels-first", "--shape", "64,96,56,56", "--groups", "3"]) == 0
    text = capsys.readouterr().out
    assert "checked against torch on its corner [4, 63, 8, 8]" in text and "200,704" in text


def test_cli_reports_a_grouping_torch_disagrees_with(capsys, monkeypatch):
    # the check is real: give BatchNorm2d InstanceNorm2d's groups and the command says so and exits 1
    wrong = dataclasses.replace(groups.NORM_SPECS["batchnorm2d"], key=groups.NORM_SPECS["instancenorm2d"].key)
    monkeypatch.setitem(groups.NORM_SPECS, "batchnorm2d", wrong)
    assert cli_main(["explain", "--layout", "channels-first", "--shape", "2,4,2,2"]) == 1
    assert "DIFFERENT from torch" in capsys.readouterr().out


def test_cli_dyt_row_in_the_default_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_main(["explain", "--shape", "2,3,4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "DyT" in line)
    assert "none: elementwise γ·tanh(α·x) + β, each element alone" in row and "none" in row


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--block", "--norm", "dyt"], "--norm dyt: DyT has no statistics to draw"),
        (["--layout", "channels-first", "--shape", "2,3,4"], "--shape must be 4 positive integers B,C,H,W"),
        (["--layout", "channels-first", "--shape", "2,5,2,2"], "--groups must divide C=5"),
        (["--layout", "channels-first", "--block"], "--layout channels-first is for the default view"),
        (["--layout", "channels-first", "--padding"], "--layout channels-first is for the default view"),
        (["--block", "--norm", "batchnorm2d"], "--norm must be one of"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert cli_main(["explain", *argv, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err and not list(tmp_path.iterdir())  # no figure written
