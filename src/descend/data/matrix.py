"""Where the matrices of `inverse` and `lowrank` come from: `task.matrix.*`.

    source: diag    values on the diagonal (the seed's diag(1, 2, 3, 4))
    source: random  rows x cols with a chosen rank, condition number and noise
    source: spd     a symmetric positive definite rows x rows matrix: eigenvalues 1 … 1/condition
    source: gram    X·Xᵀ of a Gaussian rows x cols X (positive semi-definite), as notebook 002 draws it
    source: file    (implied by a path) .npy, .pt, .csv/.txt, or a .png/.jpg as grayscale
"""

from __future__ import annotations

import torch

from descend.errors import ConfigError, require_int
from descend.data.files import read_matrix_file


def matrix_source(
    source: str = "diag",
    values: list[float] | None = None,
    rows: int = 4,
    cols: int | None = None,
    rank: int | None = None,
    condition: float = 10.0,
    noise: float = 0.0,
    seed: int = 0,
    path: str | None = None,
) -> torch.Tensor:
    """The matrix the config asks for, as a float32 tensor on the CPU."""
    if path:  # a path is the user's own matrix, whatever `source` says
        return torch.from_numpy(read_matrix_file(path)).float()
    if source == "diag":
        if not values:
            raise ConfigError("task.matrix.values is empty; give the diagonal, e.g. task.matrix.values=[1,2,3,4]")
        return torch.diag(torch.tensor([float(v) for v in values]))
    if source == "random":
        return random_matrix(rows, cols if cols is not None else rows, rank, condition, noise, seed)
    if source == "spd":
        return spd_matrix(rows, condition, seed)
    if source == "gram":
        x = torch.randn(require_int(rows, "task.matrix.rows"), require_int(cols or rows, "task.matrix.cols"),
                        generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return (x @ x.T).float()
    raise ConfigError(f"task.matrix.source={source!r} is unknown; use diag, random, spd, gram, or set task.matrix.path=<file>")


def spd_matrix(size: int, condition: float, seed: int) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a random orthonormal Q and λ spaced geometrically from 1 down to 1/condition."""
    require_int(size, "task.matrix.rows")
    if condition < 1:
        raise ConfigError(f"task.matrix.condition={condition} must be >= 1 (largest over smallest eigenvalue)")
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    exponents = torch.linspace(0, 1, size, dtype=torch.float64) if size > 1 else torch.zeros(1, dtype=torch.float64)
    matrix = q @ torch.diag(condition ** (-exponents)) @ q.T
    return ((matrix + matrix.T) / 2).float()


def require_symmetric(matrix: torch.Tensor, definite: bool, key: str = "task.matrix") -> None:
    """One line when a matrix a task needs symmetric positive (semi-)definite is not."""
    from descend.errors import DataError

    m = matrix.double()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"{key}: the matrix is {'x'.join(map(str, m.shape))}; it must be square and symmetric")
    scale = float(m.abs().max()) or 1.0
    if float((m - m.T).abs().max()) > 1e-6 * scale:
        raise DataError(f"{key}: the matrix is not symmetric (largest |A - Aᵀ| entry {float((m - m.T).abs().max()):.3g}); "
                        "give a symmetric one, e.g. (A + Aᵀ)/2")
    smallest = float(torch.linalg.eigvalsh((m + m.T) / 2)[0])
    if smallest <= (0 if definite else -1e-6 * scale):
        kind = "positive definite" if definite else "positive semi-definite"
        raise DataError(f"{key}: the matrix is not {kind} (smallest eigenvalue {smallest:.3g}); give one that is, e.g. A·Aᵀ + εI")


def random_matrix(
    rows: int, cols: int, rank: int | None, condition: float, noise: float, seed: int
) -> torch.Tensor:
    """U diag(s) Vᵀ with orthonormal U, V and singular values spaced geometrically from 1 to 1/condition,
    scaled to unit RMS entry, plus Gaussian noise of standard deviation `noise`."""
    require_int(rows, "task.matrix.rows")
    require_int(cols, "task.matrix.cols")
    true_rank = min(rows, cols) if rank is None else require_int(rank, "task.matrix.rank", 1, min(rows, cols))
    if condition < 1:
        raise ConfigError(f"task.matrix.condition={condition} must be >= 1 (largest over smallest singular value)")
    if noise < 0:
        raise ConfigError(f"task.matrix.noise={noise} must be >= 0")
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, true_rank, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, true_rank, generator=generator, dtype=torch.float64))
    exponents = torch.linspace(0, 1, true_rank, dtype=torch.float64) if true_rank > 1 else torch.zeros(1, dtype=torch.float64)
    singular = condition ** (-exponents)
    matrix = left @ torch.diag(singular) @ right.T
    matrix *= (rows * cols) ** 0.5 / matrix.norm()
    matrix += noise * torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return matrix.float()
