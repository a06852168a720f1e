"""Reading user files into numeric arrays, without executing code and with one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from descend.errors import DataError

MATRIX_SUFFIXES = (".npy", ".pt", ".csv", ".txt", ".png", ".jpg", ".jpeg")


def existing_file(path: str | Path, key: str, suffixes: tuple[str, ...]) -> Path:
    """The path as a `Path`, or a DataError naming the config key and what would be accepted."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}={path}: no such file; give the path of an existing {'/'.join(suffixes)} file")
    if file.suffix.lower() not in suffixes:
        raise DataError(f"{key}={path}: unsupported file type '{file.suffix}'; use one of {', '.join(suffixes)}")
    if file.stat().st_size == 0:
        raise DataError(f"{key}={path}: the file is empty; give a file with data in it")
    return file


def read_matrix_file(path: str | Path, key: str = "task.matrix.path") -> np.ndarray:
    """A 2-D float64 array from .npy, .pt, .csv/.txt or a .png/.jpg image (as grayscale in [0, 1])."""
    file = existing_file(path, key, MATRIX_SUFFIXES)
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(file, allow_pickle=False)
        elif suffix == ".pt":
            array = _tensor_from_pt(file, key)
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(file) as image:
                array = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        else:
            delimiter = "," if suffix == ".csv" else None
            array = np.loadtxt(file, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except DataError:
        raise
    except Exception as error:  # numpy/PIL/torch each word their parse failures differently
        raise DataError(f"{key}={path}: cannot read a numeric matrix ({type(error).__name__}: {error})") from None
    return checked_matrix(array, f"{key}={path}")


def _tensor_from_pt(file: Path, key: str) -> np.ndarray:
    import torch

    obj = torch.load(file, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise DataError(f"{key}={file}: the .pt file holds a dict with {len(tensors)} tensors; save exactly one tensor")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{key}={file}: the .pt file holds a {type(obj).__name__}, not a tensor; save one 2-D tensor")
    return obj.detach().double().numpy()


def checked_matrix(array: np.ndarray, culprit: str) -> np.ndarray:
    """The array as 2-D float64, or a DataError saying what is wrong with it."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{culprit}: holds {array.dtype} values, not numbers; give a numeric matrix")
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{culprit}: has shape {tuple(array.shape)}; a non-empty 2-D matrix is needed")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])  # row-major: the first in reading order
        raise DataError(f"{culprit}: contains {int(bad.sum())} NaN or infinite values, the first {array[row, col]} at row {row + 1}, "
                        f"column {col + 1} (counting from 1); replace them with numbers first")
    return array


def csv_header(path: str | Path, key: str = "task.data.path") -> list[str]:
    """The column names on a CSV's first line, read without the rest of the file (a config's
    target and columns are checked against them before any run folder exists)."""
    file = existing_file(path, key, (".csv",))
    with file.open(newline="") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def read_csv_table(path: str | Path, key: str = "task.data.path") -> tuple[list[str], np.ndarray, list[int]]:
    """Header names, a float64 array (rows × columns; NaN where a cell is empty or not a number,
    such as `NA`) and each data row's line number in the file (1 is the header; blank lines skipped),
    from a CSV with a header row."""
    file = existing_file(path, key, (".csv",))
    with file.open(newline="") as handle:
        reader = csv.reader(handle)
        rows = [(reader.line_num, row) for row in reader]
    if len(rows) < 2:
        raise DataError(f"{key}={path}: needs a header row and at least one data row")
    header = [name.strip() for name in rows[0][1]]
    numbered = [(line, row) for line, row in rows[1:] if any(cell.strip() for cell in row)]
    body = [row for _, row in numbered]
    if any(len(row) != len(header) for row in body):
        raise DataError(f"{key}={path}: rows have different numbers of columns than the header ({len(header)})")
    values = np.full((len(body), len(header)), np.nan)
    for i, row in enumerate(body):
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                pass  # non-numeric cell: the column is excluded or reported by the caller
    return header, values, [line for line, _ in numbered]
