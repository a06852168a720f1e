"""Where the matrices of `inverse` and `lowrank` come from: `task.matrix.*`.

    source: diag    values on the diagonal (the seed's diag(1, 2, 3, 4))
    source: random  rows x cols with a chosen rank, condition number and noise
    source: spd     a symmetric positive definite rows x rows matrix: eigenvalues 1 … 1/condition
    source: gram    X·Xᵀ of a Gaussian rows x cols X (positive semi-definite), as notebook 002 draws it
    source: file    (implied by a path) .npy, .pt, .csv/.txt, or a .png/.jpg as grayscale
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from descend.errors import ConfigError, DataError, is_number, require_int
from descend.data.files import read_matrix_file


@dataclass(frozen=True)
class MatrixConfig:
    """`task.matrix.*`, as the module's docstring describes it."""

    source: str = "diag"
    values: list[float] | None = None
    rows: int = 4
    cols: int | None = None
    rank: int | None = None
    condition: float = 10.0
    noise: float = 0.0
    seed: int = 0
    path: str | None = None

    def shape(self) -> tuple[int, int] | None:
        """(rows, cols) of the matrix these settings make, or None for a file (its shape is known
        once read). Refuses settings no matrix can be made of, with a ConfigError naming the key:
        matrix_source calls it first, and prechecks (through the task's check_config) before any
        run folder exists, so the rules live here once."""
        if self.path:  # a path is the user's own matrix, whatever `source` says
            return None
        if self.source == "diag":
            if not self.values:
                raise ConfigError("task.matrix.values is empty; give the diagonal, e.g. task.matrix.values=[1,2,3,4]")
            return len(self.values), len(self.values)
        if self.source not in ("random", "spd", "gram"):
            raise ConfigError(f"task.matrix.source={self.source!r} is unknown; use diag, random, spd, gram, or set task.matrix.path=<file>")
        rows = require_int(self.rows, "task.matrix.rows")
        if self.source == "spd":
            self.check_condition("eigenvalue")
            return rows, rows
        if self.source == "gram":  # X is rows x cols, A = X·Xᵀ rows x rows
            require_int(self.cols or rows, "task.matrix.cols")
            return rows, rows
        cols = require_int(self.cols if self.cols is not None else rows, "task.matrix.cols")
        if self.rank is not None:
            require_int(self.rank, "task.matrix.rank", 1, min(rows, cols))
        self.check_condition("singular value")
        if not is_number(self.noise) or self.noise < 0:
            raise ConfigError(f"task.matrix.noise={self.noise} must be >= 0")
        return rows, cols

    def check_condition(self, of: str) -> None:
        if not is_number(self.condition) or not self.condition >= 1:
            raise ConfigError(f"task.matrix.condition={self.condition} must be >= 1 (largest over smallest {of})")


def matrix_source(**matrix: Any) -> torch.Tensor:
    """The matrix the config's `task.matrix` (MatrixConfig's keys) asks for, as a float32 tensor on the CPU."""
    config = MatrixConfig(**matrix)
    shape = config.shape()
    if shape is None:
        return torch.from_numpy(read_matrix_file(config.path)).float()
    if config.source == "diag":
        return torch.diag(torch.tensor([float(v) for v in config.values]))
    if config.source == "random":
        return random_matrix(*shape, config.rank, config.condition, config.noise, config.seed)
    if config.source == "spd":
        return spd_matrix(shape[0], config.condition, config.seed)
    # gram
    x = torch.randn(shape[0], config.cols or config.rows, generator=torch.Generator().manual_seed(config.seed), dtype=torch.float64)
    return (x @ x.T).float()


def spd_matrix(size: int, condition: float, seed: int) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a random orthonormal Q and λ spaced geometrically from 1 down to 1/condition
    (settings checked by MatrixConfig.shape)."""
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    exponents = torch.linspace(0, 1, size, dtype=torch.float64) if size > 1 else torch.zeros(1, dtype=torch.float64)
    matrix = q @ torch.diag(condition ** (-exponents)) @ q.T
    return ((matrix + matrix.T) / 2).float()


SYMMETRIC = "it must be square and symmetric"


def require_square(shape: tuple[int, ...], need: str, key: str = "task.matrix") -> None:
    """A DataError naming the shape and `need` (why the task needs it square) where it is not square."""
    if len(shape) != 2 or shape[0] != shape[1]:
        raise DataError(f"{key}: the matrix is {'x'.join(map(str, shape))}; {need}")


def require_symmetric(matrix: torch.Tensor, definite: bool, key: str = "task.matrix") -> None:
    """One line when a matrix a task needs symmetric positive (semi-)definite is not."""
    m = matrix.double()
    require_square(tuple(m.shape), SYMMETRIC, key)
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
    scaled to unit RMS entry, plus Gaussian noise of standard deviation `noise` (settings checked
    by MatrixConfig.shape)."""
    true_rank = min(rows, cols) if rank is None else rank
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, true_rank, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, true_rank, generator=generator, dtype=torch.float64))
    exponents = torch.linspace(0, 1, true_rank, dtype=torch.float64) if true_rank > 1 else torch.zeros(1, dtype=torch.float64)
    singular = condition ** (-exponents)
    matrix = left @ torch.diag(singular) @ right.T
    matrix *= (rows * cols) ** 0.5 / matrix.norm()
    matrix += noise * torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return matrix.float()
