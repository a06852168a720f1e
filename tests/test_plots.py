"""The pictures carry their scale: a colour bar with values, numbers in small matrices' cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from descend.plots import BAR_WIDTH, CELL_PIXELS, GAP, heatmap, side_by_side

TOP = 4  # a heatmap has no caption; side_by_side's caption takes 16 pixels


def rgb(name: str, fraction: float) -> np.ndarray:
    return (np.array(colormaps[name](fraction)[:3]) * 255).astype(np.uint8)


def test_heatmap_has_a_colour_bar_from_minus_to_plus_the_largest_value():
    picture = heatmap(torch.diag(torch.tensor([1.0, -2.0, 0.5, 0.0])))
    bar_x = 4 + 4 * CELL_PIXELS + GAP + BAR_WIDTH // 2
    height = 4 * CELL_PIXELS
    np.testing.assert_allclose(picture[TOP, bar_x], rgb("RdBu_r", 1.0), atol=2)  # +2 at the top
    np.testing.assert_allclose(picture[TOP + height - 1, bar_x], rgb("RdBu_r", 0.0), atol=2)  # -2 at the bottom
    labels = picture[TOP : TOP + height, bar_x + BAR_WIDTH :]
    assert (labels.min(axis=-1) < 100).sum() > 30  # the bar's values are written beside it


def test_small_matrices_show_their_values_and_large_ones_do_not():
    def cell_has_ink(picture: np.ndarray, cell: int) -> bool:
        block = picture[TOP + 2 : TOP + cell - 2, 6 : 4 + cell - 2]
        return len(np.unique(block.reshape(-1, 3), axis=0)) > 1

    assert cell_has_ink(heatmap(torch.full((8, 8), 0.3)), CELL_PIXELS)
    assert not cell_has_ink(heatmap(torch.full((9, 9), 0.3)), 128 // 9)


def test_side_by_side_keeps_one_scale_for_both_matrices():
    a, uv = torch.ones(20, 20), torch.full((20, 20), 0.5)  # uv is half of A: darker, not re-normalised
    picture = side_by_side(a, uv)
    top, block = 16, 128 // 20 * 20
    assert picture[top + 5, 4 + 5].tolist() == rgb("gray", 1.0).tolist()  # A: the top of the scale
    assert picture[top + 5, 4 + block + GAP + 5].tolist() == rgb("gray", 0.0).tolist()  # U·Vᵀ: its bottom
    assert (picture[:top].min(axis=-1) < 100).any()  # the caption says the scale is shared


@pytest.mark.parametrize("scale", [1e-9, 1e-4, 0.03, 1.0, 1.45, 110.0, 12345.0, 3e7])
def test_cell_values_fit_their_cells_at_every_size_that_shows_them(scale):
    from descend.plots import _font, cell_texts

    generator = np.random.default_rng(0)
    for size in range(1, 9):
        values = generator.standard_normal((size, size)) * scale
        values[0, 0] = -scale * 1.0001  # the widest: a negative number at the top of the scale
        limit = float(np.abs(values).max())
        texts = cell_texts(values, limit, CELL_PIXELS - 4)
        assert all(_font().getlength(t) <= CELL_PIXELS - 4 for row in texts for t in row), texts
        assert texts[0][0] != "0"  # the largest value is never rounded away


def test_cell_values_share_one_precision_and_noise_reads_zero():
    from descend.plots import cell_texts

    # W·M of an lr sweep: the identity with float32 leftovers that used to read 5.6e-45 and 1.7e-11
    values = np.array([[0.9812, 3.3e-05, 1.7e-11, 8.8e-23], [0.068, 1.0, 1.3e-11, 5.6e-45], [0.000662, 2.4e-05, 1.0, 1.4e-22]])
    texts = cell_texts(values, 1.0, CELL_PIXELS - 4)
    assert texts == [["0.98", "0", "0", "0"], ["0.07", "1.00", "0", "0"], ["0", "0", "1.00", "0"]]
    assert cell_texts(np.array([[110.0, -3.2]]), 110.0, CELL_PIXELS - 4) == [["110", "-3"]]
    assert cell_texts(np.array([[-123456.0, 3.0]]), 123456.0, CELL_PIXELS - 4) == [["-1.2e5", "0"]]
