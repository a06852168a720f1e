"""One picture's cost, drawing and PNG encoding, against the way pictures were made before issue 21
(the baseline, measured in the same run): every text rendered by Pillow's ImageDraw.text, and
torch's summary.image encoding the PNG at zlib's default level.

    python benchmarks/picture_speed.py [--pictures 300] [--repeats 3]

Prints, for each matrix, milliseconds of CPU time (process_time: the machine may be shared) per
picture for drawing, encoding and both, baseline → now, and the ratio. The baseline's drawing is
tests/test_plots.py's reference (pillow_text, pillow_cells), the one the pixel tests compare with.
"4×4 W·M" is inverse's picture on the way to the identity (its cell texts recur from picture to
picture, as in a sweep); "first sight" clears the caches of rendered texts before every picture.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import descend.plots as plots  # noqa: E402
from descend.callbacks.images import png_summary  # noqa: E402
from test_plots import pillow_cells, pillow_text  # noqa: E402


@contextmanager
def baseline_drawing():
    """plots drawing every text with Pillow's ImageDraw.text, as before the text cache."""
    saved = plots.write, plots._write_cells
    plots.write, plots._write_cells = pillow_text, pillow_cells
    try:
        yield
    finally:
        plots.write, plots._write_cells = saved


def clear_caches() -> None:
    for cache in (plots._label, plots._cell_coverage, plots._length):
        cache.cache_clear()


def cases(count: int) -> dict[str, Callable[[int], np.ndarray]]:
    generator = torch.Generator().manual_seed(0)
    near_identity = [torch.eye(4) + 0.3 * 0.99**i * torch.randn(4, 4, generator=generator) for i in range(count)]
    large = [torch.randn(64, 64, generator=generator) for _ in range(count)]
    pairs = [(torch.randn(10, 10, generator=generator), torch.randn(10, 10, generator=generator)) for _ in range(count)]

    def first_sight(i: int) -> np.ndarray:
        clear_caches()
        return plots.heatmap(near_identity[i])

    return {
        "inverse 4×4 W·M": lambda i: plots.heatmap(near_identity[i]),
        "inverse 4×4 W·M, first sight of its texts": first_sight,
        "64×64 heatmap": lambda i: plots.heatmap(large[i]),
        "lowrank 10×10 side by side": lambda i: plots.side_by_side(*pairs[i]),
    }


def torch_encoding(picture: np.ndarray) -> object:
    from torch.utils.tensorboard.summary import image

    return image("images/x", picture, dataformats="HWC")


def per_picture(draw: Callable[[int], np.ndarray], encode: Callable[[np.ndarray], object], count: int,
                repeats: int) -> tuple[float, float]:
    """Best over `repeats` of the mean CPU milliseconds to draw a picture, and to encode it."""
    best_draw = best_encode = float("inf")
    for _ in range(repeats):
        clear_caches()
        draw(0)  # imports, colour maps
        started = time.process_time()
        pictures = [draw(i) for i in range(count)]
        drawn = time.process_time()
        for picture in pictures:
            encode(picture)
        encoded = time.process_time()
        best_draw = min(best_draw, (drawn - started) / count * 1e3)
        best_encode = min(best_encode, (encoded - drawn) / count * 1e3)
    return best_draw, best_encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=300, help="pictures per case and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best is kept")
    args = parser.parse_args()
    print(f"{'ms of CPU a picture':<44} {'draw':>15} {'encode':>15} {'both':>15}  ratio")
    for name, draw in cases(args.pictures).items():
        with baseline_drawing():
            before = per_picture(draw, torch_encoding, args.pictures, args.repeats)
        after = per_picture(draw, lambda p: png_summary("images/x", p), args.pictures, args.repeats)
        columns = [f"{b:6.3f} → {a:6.3f}" for b, a in zip((*before, sum(before)), (*after, sum(after)))]
        print(f"{name:<44} {columns[0]:>15} {columns[1]:>15} {columns[2]:>15}  {sum(before) / sum(after):4.1f}x")


if __name__ == "__main__":
    main()
