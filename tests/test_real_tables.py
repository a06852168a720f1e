"""A real-world table (columns in their own units, a text column) fits as least squares says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli
from descend.tasks.linreg import LinRegTask


def write_houses(path, rows: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Areas 50–200 m², 1–5 rooms, a city name, prices around 50 000: returns (features, price)."""
    rng = np.random.default_rng(0)
    area, rooms = rng.uniform(50, 200, rows).round(1), rng.integers(1, 6, rows)
    city = rng.choice(["Lyon", "Paris", "Nice"], rows)
    price = (300 * area + 5000 * rooms + 20000 + rng.normal(0, 2000, rows)).round()
    lines = ["area,rooms,city,price"] + [f"{a},{r},{c},{p:.0f}" for a, r, c, p in zip(area, rooms, city, price)]
    path.write_text("\n".join(lines) + "\n")
    return np.stack([area, rooms], axis=1), price


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """numpy's answer in float64: the weights, then the intercept."""
    return np.linalg.lstsq(np.column_stack([x, np.ones(len(x))]), y, rcond=None)[0]


def test_reference_in_table_units_matches_numpy(tmp_path):
    x, y = write_houses(tmp_path / "houses.csv")
    task = LinRegTask(data={"path": str(tmp_path / "houses.csv"), "target": "price"})
    reference = task.reference()
    expected = least_squares(x, y)
    np.testing.assert_allclose(reference["w"].numpy(), expected[:2], rtol=1e-5)
    np.testing.assert_allclose(reference["b"].numpy(), expected[2:], rtol=1e-5)
    # the standardised parameters at the optimum map back to that same answer
    n = task.weight.numel()
    with torch.no_grad():
        z = torch.cat([task.features.double(), torch.ones(len(task.target), 1, dtype=torch.float64)], 1)
        best = torch.linalg.lstsq(z, task.target.double().unsqueeze(1)).solution[:, 0]
        task.weight.copy_(best[:n])
        task.bias.copy_(best[n:])
    np.testing.assert_allclose(task.solution()["w"].numpy(), expected[:2], rtol=1e-4)
    np.testing.assert_allclose(task.solution()["b"].numpy(), expected[2:], rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_generated_data_is_not_standardised_unless_asked(bias):
    plain = LinRegTask(data={"source": "linear", "features": 3, "rows": 32}, bias=bias)
    assert not plain.standardized and torch.equal(plain.x_std, torch.ones(3))
    scaled = LinRegTask(data={"source": "linear", "features": 3, "rows": 32}, bias=bias, standardize=True)
    assert scaled.standardized
    # same data, same least-squares answer in the data's units, whichever units training uses
    for name, value in plain.reference().items():
        torch.testing.assert_close(scaled.reference()[name], value, rtol=1e-5, atol=1e-6)


def test_lbfgs_fits_a_real_table_in_its_own_units(tmp_path):
    x, y = write_houses(tmp_path / "houses.csv")
    proc = run_cli("task=linreg", "task.data.path=houses.csv", "task.data.target=price", "optimizer=lbfgs", *QUIET, cwd=tmp_path)
    assert "predicting price from area, rooms; left out: city (not numeric)" in proc.stdout
    run_dir = only_run(tmp_path)
    solution = torch.load(run_dir / "solution.pt", weights_only=True)
    expected = least_squares(x, y)
    np.testing.assert_allclose(solution["w"].numpy(), expected[:2], rtol=1e-4)
    np.testing.assert_allclose(solution["b"].numpy(), expected[2:], rtol=1e-4)
    result = metrics(run_dir)["metrics"]
    assert result["ref/rel_error"] < 1e-4
    # the residual error in the target's units: the noise of the prices (2 000)
    assert 1500 < result["rmse"] < 2500
    assert "left out: city (not numeric)" in (run_dir / "train.log").read_text()


def test_a_table_with_gaps_trains_at_theorys_lr_once_its_gaps_are_dropped(tmp_path):
    x, y = write_houses(tmp_path / "houses.csv")
    lines = (tmp_path / "houses.csv").read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[0], "", 1)  # an empty area on line 4
    lines[7] = ",".join(lines[7].split(",")[:3] + ["NA"])  # a price of NA on line 8
    (tmp_path / "houses.csv").write_text("\n".join(lines) + "\n")
    proc = run_cli("task=linreg", "task.data.path=houses.csv", "task.data.target=price", "task.data.missing=drop",
                   "optimizer.lr=auto", *QUIET, cwd=tmp_path)
    assert "dropped 2 of 200 rows with a missing value (area on line 4; price on line 8)" in proc.stdout
    assert "optimizer.lr=auto: " in proc.stdout and "theory's lr_optimal" in proc.stdout
    kept = np.ones(len(y), bool)
    kept[[2, 6]] = False  # data rows of lines 4 and 8
    expected = least_squares(x[kept], y[kept])
    solution = torch.load(only_run(tmp_path) / "solution.pt", weights_only=True)
    np.testing.assert_allclose(solution["w"].numpy(), expected[:2], rtol=1e-3)
    record = metrics(only_run(tmp_path))
    assert record["metrics"]["ref/rel_error"] < 1e-3  # the default lr (0.01) ends at 0.29 in 100 steps
    assert "warning: ref/rel_error" not in proc.stdout


def test_a_small_table_says_what_predicts_what_and_draws_one_bar(tmp_path):
    """An mlp on a 20-row table: an epoch is one step, so validation runs at every step. The console
    names the columns and the split, and shows one training bar, not a validation bar per step."""
    write_houses(tmp_path / "houses.csv", rows=20)
    proc = run_cli("task=mlp", "task.data.path=houses.csv", "task.data.target=price", "trainer.enable_progress_bar=true",
                   cwd=tmp_path)
    assert "mlp: predicting price from area, rooms; left out: city (not numeric); 20 rows: 16 train, 2 val, 2 test" in proc.stdout
    assert "Validation" not in proc.stdout and "\x1b[A" not in proc.stdout  # no per-step bar, no cursor-up escapes
    assert proc.stdout.count("\rTraining") < 20  # redrawn at its refresh rate, not at each of the 100 validations
    assert "100/100" in proc.stdout
