"""Pictures for TensorBoard, as HxWx3 uint8 arrays (matplotlib and Pillow are imported only when one is drawn)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Matrices up to this many rows and columns show their values in the cells
CELL_VALUES_UP_TO = 8
CELL_PIXELS = 36  # wide enough for five characters such as -0.12 (cell_text keeps within it)
BAR_WIDTH, GAP = 12, 8


def display_size(matrix: torch.Tensor, largest: int = 160) -> np.ndarray:
    """The matrix as float64 at most `largest` entries a side, by averaging blocks (area
    downscaling, on the matrix's device): a 2000×2000 matrix is drawn from 134×134 values,
    so a picture costs milliseconds whatever the matrix, and its PNG stays small."""
    values = matrix.detach()
    factor = -(-max(values.shape) // largest)  # ceil
    if factor > 1:
        rows, cols = (n // factor * factor for n in values.shape)
        values = values[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(dim=(1, 3))
    return values.double().cpu().numpy()


def heatmap(matrix: torch.Tensor, size: int = 128) -> np.ndarray:
    """A diverging red/blue picture of a matrix, white at zero and symmetric around it, with
    its colour bar (and the values in the cells of a matrix up to 8×8)."""
    values = display_size(matrix, max(size, 160))
    limit = float(np.abs(values).max()) or 1.0
    return scaled_picture([values], -limit, limit, "RdBu_r", size)


def side_by_side(left: torch.Tensor, right: torch.Tensor, names: tuple[str, str] = ("A", "U·V^T"), size: int = 128) -> np.ndarray:
    """Two matrices in grayscale on one shared scale, which their one colour bar and the
    caption above them say, so that the right one's contrast is the left one's."""
    a, b = (display_size(m, max(size, 160)) for m in (left, right))
    low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if high == low:
        low, high = low - 1.0, high + 1.0
    return scaled_picture([a, b], low, high, "gray", size, caption=f"{names[0]} | {names[1]}, one colour scale")


def scaled_picture(panels: list[np.ndarray], low: float, high: float, colormap: str, size: int, caption: str = "") -> np.ndarray:
    """Matrices as coloured blocks from `low` to `high`, side by side, and a colour bar with
    its values at the right. Drawn with numpy and Pillow's text: a tenth of what a matplotlib
    figure with a colour bar costs, which matters at a picture every hundred steps."""
    from PIL import Image  # TensorBoard's add_image imports PIL anyway

    colour = _colour_map(colormap)
    font = _font()
    top = 16 if caption else 4
    blocks = [_blocks(values, low, high, colour, size) for values in panels]
    height = max(b.shape[0] for b in blocks)
    ticks = ((0, "la", high), (height // 2, "lm", (low + high) / 2), (height, "ld", low))  # value at the top, middle, bottom
    label_width = int(max(_length(font, _number(value)) for _, _, value in ticks)) + 1
    width = 4 + sum(b.shape[1] + GAP for b in blocks) + BAR_WIDTH + 4 + label_width + 4
    canvas = np.full((top + height + 6, width, 3), 255, dtype=np.uint8)
    x = 4
    for values, block in zip(panels, blocks):
        canvas[top : top + block.shape[0], x : x + block.shape[1]] = block
        if max(values.shape) <= CELL_VALUES_UP_TO:
            _write_cells(canvas, font, values, (x, top), block.shape[0] // values.shape[0], (low, high), colour)
        x += block.shape[1] + GAP
    ramp = colour(np.linspace(1.0, 0.0, height))  # high at the top
    canvas[top : top + height, x : x + BAR_WIDTH] = (ramp[:, None, :] * 255).astype(np.uint8)
    image = Image.fromarray(canvas)
    if caption:
        write(image, (4, 2), caption, BLACK, "la")
    for y, anchor, value in ticks:
        write(image, (x + BAR_WIDTH + 4, top + y), _number(value), BLACK, anchor)
    return np.asarray(image)


def _blocks(values: np.ndarray, low: float, high: float, colour: Callable[[Any], np.ndarray], size: int) -> np.ndarray:
    """The matrix's colours, each entry a square block: `size` pixels on the longer side, and
    at least CELL_PIXELS a cell where the values are written in."""
    rgb = (colour((values - low) / (high - low)) * 255).astype(np.uint8)
    factor = max(1, size // max(values.shape))
    if max(values.shape) <= CELL_VALUES_UP_TO:
        factor = max(factor, CELL_PIXELS)
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def _write_cells(canvas: np.ndarray, font: object, values: np.ndarray, origin: tuple[int, int], cell: int,
                 scale: tuple[float, float], colour: Callable[[Any], np.ndarray]) -> None:
    """The values in their cells of `canvas` (H×W×3 uint8, changed in place; `origin` the
    panel's top-left pixel, `cell` pixels a cell), black on light colours and white on dark:
    each text centred in its cell as ImageDraw.text(anchor="mm") draws it. The pixels its
    glyphs cover (_cell_coverage) are blended in one numpy pass for all cells, with Pillow's
    rounding: (out·(255 − m) + ink·m) / 255 as ImagingFill2's BLEND computes it."""
    low, high = scale
    light = colour((values - low) / (high - low)) @ np.array([0.299, 0.587, 0.114]) > 0.5  # luminance
    texts = cell_texts(values, max(abs(low), abs(high)), cell - 4, font)
    x, y = origin
    coverage = [_cell_coverage(text, cell) for line in texts for text in line]
    if any(c is None for c in coverage):  # a text reaching out of its cell: drawn one by one
        from PIL import Image

        image = Image.fromarray(canvas)
        for row, line in enumerate(texts):
            for col, text in enumerate(line):
                write(image, (x + (col + 0.5) * cell, y + (row + 0.5) * cell), text, BLACK if light[row, col] else WHITE, "mm")
        canvas[...] = np.asarray(image)
        return
    counts = [len(c[2]) for c in coverage]
    rows, cols = np.indices(values.shape).reshape(2, -1)
    ys = np.concatenate([c[0] for c in coverage]) + np.repeat(y + rows * cell, counts)
    xs = np.concatenate([c[1] for c in coverage]) + np.repeat(x + cols * cell, counts)
    mask = np.concatenate([c[2] for c in coverage])[:, None]
    ink = np.repeat(np.where(light.reshape(-1), 0, 255).astype(np.uint16), counts)[:, None]
    blend = canvas[ys, xs] * (255 - mask) + ink * mask + 128  # uint16: at most 255·255 + 128
    canvas[ys, xs] = ((blend >> 8) + blend) >> 8


@functools.lru_cache(maxsize=4096)
def _cell_coverage(text: str, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Where `text` centred in a square cell of `cell` pixels (its top-left pixel at integer
    coordinates) covers it, as write(anchor="mm") would draw it: the rows, columns (int16) and
    coverage (uint16, 1..255) of its covered pixels; None where some of it falls outside the cell."""
    centre = cell / 2  # the same fraction of a pixel in every cell
    mask, left, top = _label(text, "mm", (math.modf(centre)[0],) * 2)
    coverage = np.asarray(mask)
    rows, cols = np.nonzero(coverage)
    values = coverage[rows, cols].astype(np.uint16)
    rows, cols = rows + (int(centre) + top), cols + (int(centre) + left)
    if not ((rows >= 0).all() and (rows < cell).all() and (cols >= 0).all() and (cols < cell).all()):
        return None
    kept = rows.astype(np.int16), cols.astype(np.int16), values  # a few hundred bytes a text in the cache
    for array in kept:
        array.flags.writeable = False  # shared by every picture that shows this text
    return kept


BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def write(image: Any, xy: tuple[float, float], text: str, ink: tuple[int, int, int], anchor: str) -> None:
    """`text` in _font() onto a Pillow RGB image at `xy` (Pillow's text anchor, e.g. "mm" for
    the middle), pixel for pixel what ImageDraw.text(xy, text, fill=ink, font=_font(),
    anchor=anchor) draws: its coverage mask, rendered once per text (_label), blended by
    Image.paste, which runs the C blend that ImageDraw.text ends in (ImagingFill2). Rendering
    was two thirds of a 4×4 heatmap's cost: 19 texts, most of them the same few numbers.
    `xy` is not negative (Pillow splits a negative coordinate's fraction differently)."""
    x, y = xy
    start = (math.modf(x)[0], math.modf(y)[0])  # Pillow renders the fraction of a pixel in the glyphs
    mask, left, top = _label(text, anchor, start)
    image.paste(ink, (int(x) + left, int(y) + top), mask)


@functools.lru_cache(maxsize=4096)
def _label(text: str, anchor: str, start: tuple[float, float]) -> tuple[Any, int, int]:
    """The coverage of `text` drawn at `start` (a fraction of a pixel), as an "L" image, and its
    top-left corner relative to the integer part of where it is drawn. Drawn with
    ImageDraw.text in white on black with two pixels' margin around the font's bounding box:
    on black, Pillow's blend leaves exactly the coverage (255·m/255 rounds to m), and
    pasting the margin's zeros leaves the picture as it was."""
    from PIL import Image, ImageDraw

    font = _font()
    left, top, right, bottom = font.getbbox(text, anchor=anchor)
    margin = 2
    mask = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
    x0, y0 = margin - left, margin - top  # where the text's anchor lies in the mask
    ImageDraw.Draw(mask).text((x0 + start[0], y0 + start[1]), text, fill=255, font=font, anchor=anchor)
    return mask, -x0, -y0


@functools.lru_cache(maxsize=4096)
def _length(font: Any, text: str) -> float:
    """font.getlength(text), measured once: cell_texts measures every cell at each precision."""
    return font.getlength(text)


def cell_texts(values: np.ndarray, limit: float, width: float, font: object | None = None) -> list[list[str]]:
    """The cells' values as the picture can show them, every one within `width` pixels.

    Written to the precision of the colour scale, which runs to ±`limit`: one number of decimals
    for all cells (two significant digits of the largest value, and two decimals on scales up to
    10, as 0.92 beside 1.00; fewer where a value would not fit), so what rounds to zero at that precision, float32 noise such as 5.6e-45 included,
    reads 0 and a 0.0007 does not look as large as a 0.7. Where no number of decimals both fits
    and shows the largest value (scales below 0.01 or beyond 10⁵), a short exponent form, 1.2e5,
    with zero below half a percent of the scale. Values written with two significant digits of
    their own ran into each other ("1.7e-118.8e-23") and overflowed their cells (1.1e+02)."""
    font = font or _font()
    rows = values.tolist()
    if not (limit > 0 and math.isfinite(limit)):
        limit = 1.0
    most = max(2 if limit < 10 else 0, 1 - math.floor(math.log10(limit)))
    for places in range(most, -1, -1):
        if limit < 10.0**-places:
            break  # the largest value would read 0: the exponent form shows it
        texts = [[_fixed(v, places) for v in row] for row in rows]
        if all(_length(font, t) <= width for row in texts for t in row):
            return texts
    return [[_short_exponent(v, limit, width, font) for v in row] for row in rows]


def _fixed(value: float, places: int) -> str:
    if not math.isfinite(value):
        return str(value)
    return "0" if abs(value) < 0.5 * 10.0**-places else f"{value:.{places}f}"


def _short_exponent(value: float, limit: float, width: float, font: object) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 5e-3 * limit:
        return "0"
    for digits in (1, 0):
        mantissa, _, exponent = f"{value:.{digits}e}".partition("e")
        text = f"{mantissa}e{int(exponent)}"  # 1.2e5, not 1.2e+05
        if _length(font, text) <= width:
            break
    return text


@functools.cache
def _colour_map(name: str) -> Callable[[Any], np.ndarray]:
    """Fractions in [0, 1] to RGB in [0, 1], built once (matplotlib's registry hands out a copy
    that builds its lookup table again). Gray without matplotlib: importing it would cost a
    lowrank run's first picture a third of a second."""
    if name == "gray":
        return lambda fraction: np.repeat(np.clip(np.asarray(fraction, dtype=np.float64), 0, 1)[..., None], 3, axis=-1)
    from matplotlib import colormaps

    colormap = colormaps[name]
    return lambda fraction: np.asarray(colormap(fraction))[..., :3]


def _number(value: float, digits: int = 3) -> str:
    text = f"{value:.{digits}g}"
    return "0" if text in ("-0", "0") else text


@functools.cache
def _font() -> object:
    """Pillow's own font, no font file to find (a FreeType font: anchored text needs one)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=10)


def curve(x: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor, title: str = "") -> np.ndarray:
    """Prediction against truth for 1-D inputs, as a rendered line plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = torch.argsort(x.cpu())
    xs, ys, ps = (t.detach().cpu().double()[order].numpy() for t in (x, truth, prediction))
    figure = Figure(figsize=(5, 3.5), dpi=80)
    axes = figure.subplots()
    axes.plot(xs, ys, ".", markersize=3, label="truth")
    axes.plot(xs, ps, "-", label="prediction")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plain_log_labels(axes: Any) -> None:
    """The log axes of `axes` labelled in plain text, decades as 10⁻⁵ (Unicode superscripts) and
    other values as 0.2, not in matplotlib's mathtext ($10^{-5}$): building the mathtext parser
    takes 0.1-0.2 s, in every sweep that draws its summary.png. Call it after the scales are set."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    for axis in (axes.xaxis, axes.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(decade_label))
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # which minor ticks get a label, as matplotlib's own


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def decade_label(value: float, position: Any = None) -> str:
    """A log axis's tick label: 10⁻⁵ for a power of ten (1 and 10 as they are), else value:g."""
    exponent = round(math.log10(value)) if value > 0 else None
    if exponent is None or not math.isclose(value, 10.0**exponent, rel_tol=1e-9):
        return f"{value:g}"
    return {0: "1", 1: "10"}.get(exponent, f"10{str(exponent).translate(SUPERSCRIPTS)}")
