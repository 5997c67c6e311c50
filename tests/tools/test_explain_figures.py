"""``tokennorm explain``'s figures scale and read: bounded size whatever the shape, a label on every group where
colours repeat, no clipped or overprinted text, BatchNorm and InstanceNorm visibly different, and the block
diagram has every norm where the Transformer puts it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from mpl_toolkits.mplot3d import art3d, proj3d

from tokennorm.tools import explain as E
from tokennorm.tools.explain import block, figures, groups

HUGE = (4096, 8192, 65536)  # 2.2e12 elements: a figure that materialized x or its groups could not be drawn


def _extent(t, renderer):
    if not isinstance(t, art3d.Text3D):
        return t.get_window_extent(renderer)
    position = t.get_position_3d()  # a 3-D text is placed where its 3-D position projects, only while drawn
    x, y, _ = proj3d.proj_transform(*position, t.axes.get_proj())
    t.set_x(x)
    t.set_y(y)
    try:
        return t.get_window_extent(renderer)
    finally:
        t.set_position_3d(position)


def _texts(fig):
    """(text, pixel box) of every non-empty text of the drawn figure."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)  # fig.texts holds the suptitle
    return [(t, _extent(t, renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def _assert_readable(fig):
    """No text outside the canvas (clipped) and no two texts overlapping (overprinted)."""
    width, height = fig.get_size_inches() * fig.dpi
    boxes = _texts(fig)
    for t, box in boxes:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, t.get_text()
    arr = np.array([[b.x0, b.y0, b.x1, b.y1] for _, b in boxes])
    overlap_x = np.minimum(arr[:, None, 2], arr[None, :, 2]) - np.maximum(arr[:, None, 0], arr[None, :, 0])
    overlap_y = np.minimum(arr[:, None, 3], arr[None, :, 3]) - np.maximum(arr[:, None, 1], arr[None, :, 1])
    clash = (overlap_x > 1) & (overlap_y > 1)
    np.fill_diagonal(clash, False)
    pairs = [(boxes[i][0].get_text(), boxes[j][0].get_text()) for i, j in zip(*np.nonzero(clash)) if i < j]
    assert not pairs, pairs[:5]


@pytest.mark.parametrize("shape", [(2, 3, 4), HUGE])
def test_groups_figure_is_bounded_and_readable(shape):
    fig = E.draw_groups(shape)
    width, height = fig.get_size_inches()
    assert width <= 17 and height <= 12  # the same bound for every shape
    _assert_readable(fig)


def test_groups_figure_size_stops_growing_with_the_shape():
    sizes = {tuple(E.draw_groups(s).get_size_inches()) for s in [(4, 7, 10), HUGE]}
    assert len(sizes) == 1  # past SHOWN, a larger shape draws the same cells and a gap


def test_large_shape_labels_every_cell_with_its_group_and_says_colours_repeat():
    shape = (3, 40, 64)  # 120 LayerNorm groups: the 20 colours repeat
    fig = E.draw_groups(shape, norms=("layernorm", "batchnorm"))
    for ax, norm in zip(fig.axes, ("layernorm", "batchnorm")):
        labels = [
            t
            for t in ax.texts
            if t.get_text().isdigit()
            and t.get_fontsize() > 4.5
            and t.get_fontsize() <= 6.5
            and t.get_color() == "black"
        ]
        bs, ns, cs = (figures.shown_indices(size, limit) for size, limit in zip(shape, figures.SHOWN))
        drawn = [(b, n, c) for b in bs for n in ns for c in cs if None not in (b, n, c)]
        assert len(labels) == len(drawn)
        # distinct groups get distinct labels even where their colours are equal
        expected = sorted(
            int(groups.group_ids(norm, shape, torch.tensor(b), torch.tensor(n), torch.tensor(c))) for b, n, c in drawn
        )
        assert sorted(int(t.get_text()) for t in labels) == expected
    assert "colours repeat" in fig._suptitle.get_text() and "same colour" not in fig._suptitle.get_text()
    small = E.draw_groups((2, 3, 4))
    assert "same number (and colour) = same group" in small._suptitle.get_text()


def test_shown_indices():
    assert figures.shown_indices(5, 8) == [0, 1, 2, 3, 4]
    assert figures.shown_indices(100, 8) == [0, 1, 2, 3, 4, 5, None, 99]
    assert figures.shown_indices(4, 3) == [0, None, 3]


def test_group_ids_and_counts_need_no_full_tensor():
    for norm in E.NORMS:
        k, each = groups.group_count(norm, HUGE, 2)
        b, n, c = HUGE
        assert k * each == b * n * c
        last = groups.group_ids(norm, HUGE, torch.tensor(b - 1), torch.tensor(n - 1), torch.tensor(c - 1))
        assert int(last) == k - 1  # ids 0..k-1, numbered in row-major order: the last element has the last id


@pytest.mark.parametrize("norm", E.NORMS)
def test_registered_keys_number_groups_in_order_of_first_appearance(norm):
    # the contract of NormSpec.key, on which the cheap group_ids/group_count rely
    shape = (3, 4, 6)
    ids = E.stat_groups(norm, shape, 2).flatten().tolist()
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == list(range(len(first_seen)))


def _blue_pixels(path, panels):
    img = mpimg.imread(path)[..., :3]
    blue = np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255).sum(-1) < 0.35  # the highlight colour, shaded
    width = img.shape[1] / panels
    return [int(blue[:, int(i * width) : int((i + 1) * width)].sum()) for i in range(panels)]


def test_cubes_tell_batchnorm_from_instancenorm(tmp_path):
    fig = E.draw_cube((2, 3, 4), norms=("batchnorm", "instancenorm", "layernorm"), path=tmp_path / "c.png")
    _assert_readable(fig)
    bn, inorm, ln = _blue_pixels(tmp_path / "c.png", 3)
    # BatchNorm's group of [0,0,0] is channel 0 in both sequences, InstanceNorm's only in sequence 0: the
    # highlighted area differs visibly (about twice as large)
    assert bn > 1.5 * inorm > 0 and ln > 0


def test_cube_figure_is_bounded_for_huge_shapes():
    fig = E.draw_cube(HUGE, norms=("instancenorm",))
    assert tuple(fig.get_size_inches()) == tuple(E.draw_cube((2, 3, 4), norms=("layernorm",)).get_size_inches())
    assert "drawn: the corner b < 3, n < 6, c < 8" in fig._suptitle.get_text()
    (ax,) = fig.axes
    assert "262,144" not in ax.get_title() and "8,192 elements" in ax.get_title()  # the group size, not drawn


# ---------------------------------------------------------------------------------------------- block


@pytest.mark.parametrize("decoder, placement", itertools.product([False, True], ["post", "pre"]))
def test_block_puts_each_norm_where_the_transformer_computes_it(decoder, placement):
    nodes = block.layer_nodes(decoder, placement)
    kinds = [n.kind for n in nodes]
    sublayers = [i for i, n in enumerate(nodes) if n.kind in ("attn", "ffn")]
    assert len(sublayers) == (3 if decoder else 2)
    assert any(n.memory for n in nodes) == decoder  # cross-attention reads the encoder output
    for i in sublayers:
        add = i + 1
        assert nodes[add].kind == "add"
        if placement == "post":  # Norm(x + sublayer(x)): the norm right after the add
            assert nodes[add + 1].kind == "norm" and not nodes[add + 1].dashed
            assert nodes[add].residual_from == i - 1  # the sublayer's input
        else:  # x + sublayer(Norm(x)): the norm before the sublayer, the residual skips it
            assert nodes[i - 1].kind == "norm"
            assert nodes[add].residual_from == i - 2
    assert kinds[0] == kinds[-1] == "io"
    dashed = [n for n in nodes if n.dashed]
    assert len(dashed) == (placement == "pre")  # pre-LN's final norm, after the last layer only
    assert kinds.count("norm") == len(sublayers) + (placement == "pre")


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_block_figure(tmp_path, norm):
    fig = block.draw_block(norm, tmp_path / "block.png")
    fig.savefig(tmp_path / "block.svg")
    _assert_readable(fig)
    texts = [t.get_text() for t, _ in _texts(fig)]
    spec = groups.NORM_SPECS[norm]
    norm_boxes = sum(t == spec.title for t in texts)
    assert norm_boxes == 2 + 3 + 3 + 4  # post enc, pre enc (+ final), post dec, pre dec (+ final)
    assert sum(t == spec.over for t in texts) == norm_boxes  # each box says the axis it normalizes
    words = " ".join(" ".join(texts).split())  # wrapped lines joined
    assert spec.formula in words and spec.affine in words
    warning = any("mix tokens" in t for t in texts)
    assert warning == (norm == "batchnorm")
    assert mpimg.imread(tmp_path / "block.png").shape[:2] == (860, 1950)
    assert (tmp_path / "block.svg").read_text().lstrip().startswith("<?xml")
