"""Where the tables of `linreg` and `mlp` come from: `task.data.*`.

    source: seed     the five points of seed notebook 003 (x = 1..5, y = 2x)
    source: linear   y = X·w + b + noise, with chosen or random true weights
    source: sin      y = sin(x) on [0, 2π] (seed notebook 000), optional noise
    source: teacher  y = a random tanh network of X, plus noise (the noise floor is known)
    source: csv      (implied by a path) the user's CSV with a header row and a target column
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from descend.data.files import csv_header, read_csv_table
from descend.errors import ConfigError, DataError, is_number, require_int


@dataclass
class Table:
    features: torch.Tensor  # (rows, features), float32
    target: torch.Tensor  # (rows,), float32
    feature_names: list[str]
    target_name: str
    noise_floor: float | None = None  # the best achievable MSE where it is known (noise variance)
    left_out: dict[str, str] = field(default_factory=dict)  # CSV columns not used, and why
    dropped: str = ""  # task.data.missing=drop: how many rows were dropped, and for which columns

    def describe(self) -> str:
        """Which columns predict which, for the console: a real table's surprises show here."""
        text = f"predicting {self.target_name} from {', '.join(self.feature_names)}"
        if self.left_out:
            text += "; left out: " + ", ".join(f"{name} ({why})" for name, why in self.left_out.items())
        if self.dropped:
            text += f"; {self.dropped}"
        return text


@dataclass
class Scaling:
    """Standardisation of features and target, so that one learning rate suits any table's units.

    Training sees (x - x_mean) / x_std and (y - y_mean) / y_std; `center=False` only scales, for
    models without an intercept (centring would add one)."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, enabled: bool = True, center: bool = True) -> "Scaling":
        if not enabled or len(y) < 2:
            return cls(torch.zeros_like(x[0]), torch.ones_like(x[0]), torch.tensor(0.0), torch.tensor(1.0))
        if center:
            x_mean, x_std, y_mean, y_std = x.mean(0), x.std(0), y.mean(), y.std()
        else:  # root mean square: the scale of an uncentred column
            x_mean, y_mean = torch.zeros_like(x[0]), torch.tensor(0.0)
            x_std, y_std = x.square().mean(0).sqrt(), y.square().mean().sqrt()
        # constant (or all-zero) columns stay as they are
        return cls(x_mean, x_std.clamp_min(1e-12), y_mean, y_std.clamp_min(1e-12))


@dataclass(frozen=True)
class TableConfig:
    """`task.data.*`, as the module's docstring describes it."""

    source: str = "seed"
    rows: int = 256
    features: int = 1
    noise: float = 0.0
    weights: list[float] | None = None
    bias: float = 0.0
    hidden: int = 16
    seed: int = 0
    path: str | None = None
    target: str | None = None
    columns: list[str] | None = None
    missing: str = "error"

    def rows_made(self) -> int | None:
        """The number of rows of a generated table, or None for a CSV (known once read). Refuses
        settings no table can be made of, with a ConfigError or DataError naming the key: a CSV's
        columns are checked against its header line. table_source calls it first, and prechecks
        (through the task's check_config) before any run folder exists, so the rules live here once."""
        if self.path:  # a path is the user's own table, whatever `source` says
            self.check_columns()
            return None
        require_int(self.rows, "task.data.rows")
        require_int(self.features, "task.data.features")
        require_int(self.hidden, "task.data.hidden")
        if not is_number(self.noise) or self.noise < 0:
            raise ConfigError(f"task.data.noise={self.noise} must be >= 0")
        if self.source not in SOURCES:
            raise ConfigError(f"task.data.source={self.source!r} is unknown; use {', '.join(SOURCES)}, or set task.data.path=<file.csv>")
        if self.source == "linear" and self.weights is not None and len(self.weights) != self.features:
            raise ConfigError(f"task.data.weights has {len(self.weights)} values but task.data.features={self.features}; make them agree")
        return 5 if self.source == "seed" else self.rows

    def check_columns(self) -> None:
        """task.data.missing, and the target and feature columns against the CSV's header line."""
        if self.missing not in MISSING:
            raise ConfigError(f"task.data.missing={self.missing!r} is unknown; use error (refuse rows with missing values) or drop (leave them out)")
        header = csv_header(self.path)
        if not self.target:
            raise ConfigError(f"task.data.target is not set; name the column to predict, one of: {', '.join(header)}")
        if self.target not in header:
            raise DataError(f"task.data.path={self.path}: no column named {self.target!r}; columns are: {', '.join(header)}")
        unknown = [c for c in self.columns or [] if c not in header]
        if unknown:
            raise DataError(f"task.data.columns names {unknown} which {self.path} does not have; columns are: {', '.join(header)}")


SOURCES = ("seed", "linear", "sin", "teacher")


def table_source(**data: Any) -> Table:
    """The table the config's `task.data` (TableConfig's keys) asks for."""
    config = TableConfig(**data)
    config.rows_made()
    if config.path:
        return csv_table(config.path, config.target, config.columns, config.missing)
    source, rows, features, noise, seed = config.source, config.rows, config.features, config.noise, config.seed
    generator = torch.Generator().manual_seed(seed)
    names = [f"x{i}" for i in range(features)]
    if source == "seed":
        x = torch.arange(1.0, 6.0).unsqueeze(1)
        return Table(x, 2 * x[:, 0], ["x"], "y", noise_floor=0.0)
    if source == "linear":
        true_w = torch.randn(features, generator=generator) if config.weights is None else torch.tensor([float(w) for w in config.weights])
        x = torch.randn(rows, features, generator=generator)
        y = x @ true_w + config.bias + noise * torch.randn(rows, generator=generator)
        return Table(x, y, names, "y", noise_floor=noise**2)
    if source == "sin":
        x = torch.linspace(0, 2 * math.pi, rows).unsqueeze(1)
        y = torch.sin(x[:, 0]) + noise * torch.randn(rows, generator=generator)
        return Table(x, y, ["x"], "y", noise_floor=noise**2)
    # teacher
    x = torch.randn(rows, features, generator=generator)
    w1 = torch.randn(features, config.hidden, generator=generator) / math.sqrt(features)
    w2 = torch.randn(config.hidden, generator=generator) / math.sqrt(config.hidden)
    y = torch.tanh(x @ w1) @ w2 * 2.0 + noise * torch.randn(rows, generator=generator)
    return Table(x, y, names, "y", noise_floor=noise**2)


MISSING = ("error", "drop")


def csv_table(path: str, target: str | None, columns: list[str] | None, missing: str = "error") -> Table:
    """The user's CSV as a Table of its numeric columns (the settings checked by TableConfig). A cell
    that is empty or not a number (`NA`) in a used column is refused with the columns and lines it
    is on, or with `missing="drop"` its row is dropped (pandas' dropna over the used columns) and
    the count reported."""
    header, values, lines = read_csv_table(path)  # missing, target and columns checked by TableConfig.check_columns
    numeric = [name for j, name in enumerate(header) if not np.isnan(values[:, j]).all()]
    if columns:
        feature_names = list(columns)
    else:
        feature_names = [name for name in numeric if name != target]
    if not feature_names:
        raise DataError(f"task.data.path={path}: no numeric feature columns besides {target!r}")
    used = [*feature_names, target]
    block = values[:, [header.index(name) for name in used]]
    bad = ~np.isfinite(block)  # rows × used columns
    bad_rows = np.flatnonzero(bad.any(axis=1))
    dropped = ""
    if len(bad_rows):
        where = "; ".join(_bad_cells(name, [lines[i] for i in np.flatnonzero(bad[:, j])]) for j, name in enumerate(used) if bad[:, j].any())
        if missing == "error" or len(bad_rows) == len(block):
            fix = "every row has one, so nothing is left to train on; fill them in" if len(bad_rows) == len(block) else (
                "drop those rows with task.data.missing=drop, fill them in, or leave the columns out with task.data.columns")
            raise DataError(f"task.data.path={path}: {len(bad_rows)} of {len(block)} rows have an empty, non-numeric (NA) or "
                            f"infinite value: {where}; {fix}")
        block = block[~bad.any(axis=1)]
        dropped = f"dropped {len(bad_rows)} of {len(bad_rows) + len(block)} rows with a missing value ({where})"
    tensor = torch.from_numpy(block).float()
    left_out = {name: ("not numeric" if name not in numeric else "not in task.data.columns")
                for name in header if name != target and name not in feature_names}
    return Table(tensor[:, :-1], tensor[:, -1], feature_names, target, left_out=left_out, dropped=dropped)


def _bad_cells(column: str, lines: list[int], shown: int = 3) -> str:
    """`mileage on line 4` / `price on lines 4, 9, 12 and 5 more`: where a column's bad cells are."""
    listed = ", ".join(map(str, lines[:shown])) + (f" and {len(lines) - shown} more" if len(lines) > shown else "")
    return f"{column} on line{'s' if len(lines) > 1 else ''} {listed}"
