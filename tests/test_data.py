"""Matrix and table sources: every supported file kind, and each bad file answered clearly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from descend.data.files import read_matrix_file
from descend.data.loaders import RepeatBatch, TensorBatches
from descend.stepping import StepPlan
from descend.data.matrix import matrix_source
from descend.data.table import table_source
from descend.errors import ConfigError, DataError

MATRIX = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 4.0]])


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".csv", ".txt"])
def test_numeric_matrix_files_round_trip(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".npy":
        np.save(path, MATRIX)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(MATRIX), path)
    else:
        np.savetxt(path, MATRIX, delimiter="," if suffix == ".csv" else " ")
    np.testing.assert_allclose(read_matrix_file(path), MATRIX)
    assert matrix_source(path=str(path)).dtype == torch.float32


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_images_are_read_as_grayscale_matrices(tmp_path, suffix):
    from PIL import Image

    pixels = (np.linspace(0, 255, 12 * 20).reshape(12, 20)).astype(np.uint8)
    Image.fromarray(np.stack([pixels] * 3, -1)).save(tmp_path / f"p{suffix}")
    matrix = read_matrix_file(tmp_path / f"p{suffix}")
    assert matrix.shape == (12, 20) and 0 <= matrix.min() and matrix.max() <= 1
    np.testing.assert_allclose(matrix, pixels / 255, atol=0.05 if suffix == ".jpg" else 1e-9)


def test_pt_files_are_loaded_without_running_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"m": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="cannot read a numeric matrix"):
        read_matrix_file(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npy", None, "no such file"),
        ("empty.csv", "", "empty"),
        ("words.csv", "a,b\nc,d\n", "cannot read a numeric matrix"),
        ("nan.csv", "1,2\nnan,4\n", "NaN or infinite"),
        ("m.xlsx", "1", "unsupported file type"),
    ],
)
def test_bad_matrix_files_get_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_matrix_file(path)
    assert "task.matrix.path" in str(error.value) and "\n" not in str(error.value)


def test_a_matrix_with_a_nan_says_where(tmp_path):
    (tmp_path / "m.csv").write_text("1,2,3\n4,5,nan\n7,8,9\n")
    with pytest.raises(DataError, match=r"row 2, column 3 \(counting from 1\)"):
        read_matrix_file(tmp_path / "m.csv")


def test_three_dimensional_array_is_refused(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match="2-D"):
        read_matrix_file(tmp_path / "cube.npy")


def test_csv_table_selects_target_and_numeric_features(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("name,x1,x2,y\na,1,2,3\nb,2,3,5\nc,3,5,8\n")
    table = table_source(path=str(path), target="y")
    assert table.feature_names == ["x1", "x2"] and table.target.tolist() == [3, 5, 8]
    assert table_source(path=str(path), target="y", columns=["x2"]).features.shape == (3, 1)


@pytest.mark.parametrize(
    ("content", "target", "error", "message"),
    [
        ("x,y\n1,2\n", "z", DataError, "no column named 'z'"),
        ("x,y\n1,2\n", None, ConfigError, "task.data.target"),
        ("x,y\n1,2\n2,oops\n", "y", DataError, "non-numeric"),
        ("x,y\n1,2\n2,inf\n", "y", DataError, "infinite"),
        ("x,y\n", "y", DataError, "at least one data row"),
    ],
)
def test_bad_csv_tables_get_a_clear_error(tmp_path, content, target, error, message):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(error, match=message):
        table_source(path=str(tmp_path / "t.csv"), target=target)


CARS = "model,mileage,engine_l,price\na,1,1.2,9\nb,,1.4,8\nc,3,NA,7\nd,4,2.0,\ne,5,1.6,6\nf,6,1.8,5\n"


def test_missing_cells_are_refused_naming_each_column_and_line(tmp_path):
    (tmp_path / "cars.csv").write_text(CARS)
    with pytest.raises(DataError) as error:
        table_source(path=str(tmp_path / "cars.csv"), target="price")
    message = str(error.value)
    assert "3 of 6 rows" in message and "\n" not in message
    # lines of the file (the header is line 1), column by column, and the way on
    assert "mileage on line 3; engine_l on line 4; price on line 5" in message
    assert "task.data.missing=drop" in message


def test_missing_drop_leaves_out_those_rows_and_counts_them(tmp_path):
    (tmp_path / "cars.csv").write_text(CARS)
    table = table_source(path=str(tmp_path / "cars.csv"), target="price", missing="drop")
    assert table.target.tolist() == [9, 6, 5]
    assert table.features.tolist() == [[1, pytest.approx(1.2)], [5, pytest.approx(1.6)], [6, pytest.approx(1.8)]]
    assert "dropped 3 of 6 rows with a missing value" in table.describe()
    # a column left out is not a reason to drop its rows
    only_engine = table_source(path=str(tmp_path / "cars.csv"), target="price", columns=["engine_l"], missing="drop")
    assert len(only_engine.target) == 4
    with pytest.raises(ConfigError, match="task.data.missing='fill'"):
        table_source(path=str(tmp_path / "cars.csv"), target="price", missing="fill")


def test_generated_tables_are_seeded():
    a = table_source(source="teacher", rows=30, features=4, noise=0.1, seed=7)
    b = table_source(source="teacher", rows=30, features=4, noise=0.1, seed=7)
    assert torch.equal(a.features, b.features) and torch.equal(a.target, b.target)
    with pytest.raises(ConfigError, match="weights"):
        table_source(source="linear", features=2, weights=[1.0])


def test_repeat_batch_yields_the_same_tensors_without_copying():
    batch = (torch.ones(3),)
    trainer = SimpleNamespace(world_size=1, val_check_interval=None, limit_train_batches=None, callbacks=[], global_step=0, max_steps=-1)
    groups = list(RepeatBatch(batch, 4, StepPlan(trainer, steps_per_batch=3)))
    seen = [b for group in groups for b in group.batches]
    assert [len(g) for g in groups] == [3, 1]  # at most 3 steps per group, 4 in the epoch
    assert len(seen) == 4 and all(b[0] is batch[0] for b in seen)


def test_tensor_batches_cover_every_row_once_and_shard_evenly():
    x = torch.arange(10.0)
    batches = TensorBatches((x, x * 2), batch_size=4, shuffle=True, seed_fn=lambda epoch: 3)
    rows = torch.cat([b[0] for b in batches])
    assert sorted(rows.tolist()) == list(range(10)) and not torch.equal(rows, x)
    assert torch.equal(torch.cat([b[0] for b in batches]), rows)  # same seed, same order
    shards = [torch.cat([b[0] for b in TensorBatches((x,), 4, True, lambda epoch: 3, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and set(shards[0].tolist()).isdisjoint(shards[1].tolist())
