"""The pictures carry their scale: a colour bar with values, numbers in small matrices' cells."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from conftest import QUIET, only_run, run_cli, tensorboard_events
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


# ---- the pictures as they were drawn before the text cache and the fast PNG (issue 21) ----
def pillow_text(image, xy, text, ink, anchor):
    """How plots drew a text before plots.write: Pillow's ImageDraw.text, its glyphs rendered each time."""
    from PIL import ImageDraw

    from descend.plots import _font

    ImageDraw.Draw(image).text(xy, text, fill=ink, font=_font(), anchor=anchor)


def pillow_cells(canvas, font, values, origin, cell, scale, colour):
    """How plots wrote the values in their cells before (on the canvas array): one ImageDraw.text a cell."""
    from PIL import Image, ImageDraw

    from descend.plots import cell_texts

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    low, high = scale
    light = colour((values - low) / (high - low)) @ np.array([0.299, 0.587, 0.114]) > 0.5
    texts = cell_texts(values, max(abs(low), abs(high)), cell - 4, font)
    for (row, col), _ in np.ndenumerate(values):
        centre = (origin[0] + (col + 0.5) * cell, origin[1] + (row + 0.5) * cell)
        draw.text(centre, texts[row][col], fill=(0, 0, 0) if light[row, col] else (255, 255, 255), font=font, anchor="mm")
    canvas[...] = np.asarray(image)


def pictures() -> list[np.ndarray]:
    """Heatmaps of every shape that shows its values (inverse's 4×4, quadratic's 2×n) and some
    that do not, at scales from 1e-9 to 1e6, and lowrank's side-by-side pictures."""
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for rows in range(1, 10):
        for cols in (1, 2, 3, 5, 8, 9):
            for scale in (1e-9, 1e-3, 0.7, 37.0, 1e6):
                drawn.append(heatmap(torch.randn(rows, cols, generator=generator) * scale))
    drawn += [heatmap(torch.eye(4) + 0.01 * torch.randn(4, 4, generator=generator)), heatmap(torch.zeros(4, 4)),
              heatmap(torch.randn(64, 64, generator=generator))]
    for n in (3, 4, 20, 300):
        drawn.append(side_by_side(torch.randn(n, n, generator=generator), 0.5 * torch.randn(n, n, generator=generator)))
    return drawn


def test_pictures_are_pixel_for_pixel_what_pillows_text_drawing_drew(monkeypatch):
    import descend.plots as plots

    fast = pictures()
    monkeypatch.setattr(plots, "write", pillow_text)
    monkeypatch.setattr(plots, "_write_cells", pillow_cells)
    before = pictures()
    assert len(fast) == len(before) > 250
    for index, (picture, reference) in enumerate(zip(fast, before)):
        assert picture.shape == reference.shape and np.array_equal(picture, reference), index


def test_texts_land_as_pillow_draws_them_at_fractions_of_a_pixel_and_across_the_edges():
    from PIL import Image

    from descend.plots import BLACK, WHITE, write

    generator = np.random.default_rng(0)
    noise = generator.integers(0, 256, (40, 90, 3), dtype=np.uint8)  # every background colour blends alike
    cases = [((x, y), text, ink, anchor) for (x, y) in ((30, 20), (30.5, 20.25), (1.75, 3.5), (88.2, 39.9), (-3, -2))
             for text in ("0.98", "-1.2e5", "A | U·Vᵀ, one colour scale")
             for ink in (BLACK, WHITE, (200, 30, 90)) for anchor in ("mm", "la", "ld", "lm")]
    for xy, text, ink, anchor in cases:
        ours, theirs = Image.fromarray(noise), Image.fromarray(noise)
        write(ours, xy, text, ink, anchor)
        pillow_text(theirs, xy, text, ink, anchor)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), (xy, text, ink, anchor)


def test_cell_texts_too_wide_for_their_cells_are_still_pillows():
    from descend.plots import _colour_map, _font, _write_cells

    values = np.array([[-1234.5, 0.25], [3.0, -0.5]])
    for cell in (9, 14, 36, 37):  # a text spilling into the next cell; an odd cell puts it at half pixels
        ours, theirs = (np.full((2 * cell + 10, 2 * cell + 10, 3), 200, dtype=np.uint8) for _ in range(2))
        _write_cells(ours, _font(), values, (5, 5), cell, (-1234.5, 1234.5), _colour_map("RdBu_r"))
        pillow_cells(theirs, _font(), values, (5, 5), cell, (-1234.5, 1234.5), _colour_map("RdBu_r"))
        assert np.array_equal(ours, theirs), cell


def test_the_encoded_picture_decodes_to_the_drawn_one_with_torchs_fields():
    import io

    from PIL import Image
    from torch.utils.tensorboard.summary import image

    from descend.callbacks.images import png_summary

    generator = np.random.default_rng(1)
    drawn = [heatmap(torch.eye(4)), heatmap(torch.randn(64, 64)), side_by_side(torch.ones(5, 5), torch.zeros(5, 5)),
             generator.integers(0, 256, (33, 47, 3), dtype=np.uint8), generator.integers(0, 256, (20, 30, 4), dtype=np.uint8)]
    for picture in drawn:
        ours, torchs = png_summary("images/W·M", picture).value[0], image("images/W·M", picture, dataformats="HWC").value[0]
        assert ours.tag == torchs.tag == "images/W·M"
        fields = ("height", "width", "colorspace")
        assert [getattr(ours.image, f) for f in fields] == [getattr(torchs.image, f) for f in fields] == [*picture.shape]
        Image.open(io.BytesIO(ours.image.encoded_image_string)).verify()  # every chunk's CRC
        decoded = Image.open(io.BytesIO(ours.image.encoded_image_string))
        assert decoded.format == "PNG" and decoded.mode == ("RGBA" if picture.shape[2] == 4 else "RGB")
        assert np.array_equal(np.asarray(decoded), picture)
    floats = generator.random((10, 12, 3)).astype(np.float32)  # anything but uint8 pictures: torch's own conversion
    assert png_summary("x", floats) == image("x", floats, dataformats="HWC")


@pytest.mark.parametrize("launcher", ["alone", "population"])
def test_tensorboard_reads_a_runs_pictures_at_their_steps_as_drawn(tmp_path: Path, launcher: str):
    """ImageLogger's and PopulationImages' pictures, read back by TensorBoard's EventAccumulator
    from real runs: at their steps, PNGs of the size the events say, the last one the heatmap
    of the saved W·M pixel for pixel."""
    from PIL import Image

    every = ["trainer.max_steps=30", "callbacks.images.every_n_steps=10", "callbacks.images.max_share=null", *QUIET]
    if launcher == "alone":
        run_cli("optimizer.lr=0.1", *every, cwd=tmp_path)
        runs = [only_run(tmp_path)]
    else:
        run_cli("-m", "hydra/launcher=population", "optimizer.lr=0.1,0.3", *every, cwd=tmp_path)
        runs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir() and p.name[:2].isdigit())
        assert len(runs) == 2
    matrix = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # conf/task/inverse.yaml's M
    for run in runs:
        shots = tensorboard_events(run).Images("images/W·M")
        assert [shot.step for shot in shots] == [0, 10, 20, 30], run.name
        decoded = [Image.open(io.BytesIO(shot.encoded_image_string)) for shot in shots]
        for shot, image in zip(shots, decoded):
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (shot.width, shot.height)
        drawn = heatmap(torch.load(run / "solution.pt", weights_only=True)["W"] @ matrix)
        assert np.array_equal(np.asarray(decoded[-1]), drawn), run.name


def test_log_axes_are_labelled_in_plain_text_as_matplotlib_places_them():
    """plain_log_labels: decades as 10⁻² (no mathtext, whose parser costs a sweep 0.1-0.2 s), other
    values as numbers, on the ticks matplotlib's own log axis labels; linear axes keep theirs."""
    from matplotlib.figure import Figure

    from descend.plots import decade_label, plain_log_labels

    assert [decade_label(v) for v in (1e-5, 0.01, 1, 10, 100, 0.2, 3e-7)] == ["10⁻⁵", "10⁻²", "1", "10", "10²", "0.2", "3e-07"]
    figure = Figure()
    wide, narrow = figure.subplots(1, 2)
    wide.plot([1e-3, 1], [1e-9, 1e-2])
    wide.set_xscale("log"), wide.set_yscale("log")
    narrow.plot([1, 2], [0.2, 0.5])
    narrow.set_yscale("log")  # less than a decade: matplotlib labels minor ticks
    default = {axis: axis.get_major_formatter() for axis in (narrow.xaxis,)}
    for axes in (wide, narrow):
        plain_log_labels(axes)
    figure.canvas.draw()
    labels = [t.get_text() for axes in (wide, narrow) for axis in (axes.xaxis, axes.yaxis)
              for t in (*axis.get_majorticklabels(), *axis.get_minorticklabels()) if t.get_text()]
    assert labels and not any("$" in label for label in labels)
    assert {"10⁻³", "10⁻²", "10⁻¹", "1"} <= set(labels)
    assert [t.get_text() for t in narrow.yaxis.get_minorticklabels() if t.get_text()]  # minor ticks labelled, as matplotlib does
    assert narrow.xaxis.get_major_formatter() is default[narrow.xaxis]  # a linear axis keeps its formatter
