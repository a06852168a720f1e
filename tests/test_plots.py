"""The pictures carry their scale: a colour bar with values, numbers in small matrices' cells."""

from __future__ import annotations

import numpy as np
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
