"""Pictures for TensorBoard, as HxWx3 uint8 arrays (matplotlib is imported only when one is drawn)."""

from __future__ import annotations

import numpy as np
import torch


def _upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so a 4x4 matrix shows as sharp blocks rather than a blur."""
    factor = max(1, size // max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


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
    """A diverging red/blue picture of a matrix, white at zero, symmetric around it."""
    from matplotlib import colormaps

    values = display_size(matrix, max(size, 160))
    limit = np.abs(values).max() or 1.0
    rgba = colormaps["RdBu_r"]((values / limit + 1) / 2)
    return _upscale((rgba[..., :3] * 255).astype(np.uint8), size)


def side_by_side(left: torch.Tensor, right: torch.Tensor, size: int = 128) -> np.ndarray:
    """Two matrices as grayscale pictures on one shared scale, with a gap between them."""
    a, b = (display_size(m, max(size, 160)) for m in (left, right))
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    scale = (high - low) or 1.0
    gap = np.ones((a.shape[0], max(1, a.shape[1] // 20)))
    gray = np.concatenate([(a - low) / scale, gap, (b - low) / scale], axis=1)
    image = (np.stack([gray] * 3, axis=-1) * 255).astype(np.uint8)
    return _upscale(image, size)


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
