"""Unit tests of each task's loss, closed-form reference and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from descend.errors import ConfigError, DataError
from descend.tasks.base import Task
from descend.tasks.inverse import InverseTask
from descend.tasks.linreg import LinRegTask
from descend.tasks.lowrank import LowRankTask
from descend.tasks.mlp import MLPTask, split_rows

DIAG = {"source": "diag", "values": [1.0, 2.0, 3.0, 4.0]}


def gradients(task, batch):
    task.zero_grad()
    task.loss(batch).backward()
    return {name: p.grad.clone() for name, p in task.named_parameters()}


def test_inverse_loss_and_gradient_match_the_closed_form():
    torch.manual_seed(314)
    task = InverseTask(matrix=DIAG)
    m, eye = task.full_batch()
    w = task.weight.detach()
    assert task.loss((m, eye)).item() == pytest.approx(1.6650, abs=1e-4)  # seed notebook 000, step 0
    # d/dW mean((WM − I)²) = 2/n² (WM − I) Mᵀ
    expected = 2 / 16 * (w @ m - eye) @ m.T
    torch.testing.assert_close(gradients(task, (m, eye))["weight"], expected)


def test_inverse_reference_is_the_inverse_and_distances_vanish_there():
    task = InverseTask(matrix={"source": "random", "rows": 5, "cols": 5, "condition": 20.0, "seed": 3})
    ref = task.cached_reference()
    torch.testing.assert_close(ref["W"] @ task.matrix.double(), torch.eye(5, dtype=torch.float64))
    with torch.no_grad():
        task.weight.copy_(ref["W"].float())
    d = task.distances(task.loss(task.full_batch()))
    assert d["ref/rel_error"] < 1e-6 and abs(d["ref/excess_loss"]) < 1e-10


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"source": "diag", "values": [1.0, 0.0]}, "singular"),
        ({"source": "random", "rows": 3, "cols": 4}, "square"),
        ({"source": "nope"}, "task.matrix.source"),
    ],
)
def test_inverse_refuses_bad_matrices(matrix, message):
    with pytest.raises((ConfigError, DataError), match=message):
        InverseTask(matrix=matrix)


def test_random_matrix_has_the_requested_condition_number():
    task = InverseTask(matrix={"source": "random", "rows": 6, "condition": 50.0, "seed": 1})
    assert float(torch.linalg.cond(task.matrix.double())) == pytest.approx(50.0, rel=1e-4)


def test_linreg_gradient_and_least_squares_reference():
    task = LinRegTask(data={"source": "linear", "rows": 40, "features": 3, "noise": 0.1, "bias": 0.5, "seed": 2}, init="randn")
    x, y = task.full_batch()
    residual = x @ task.weight.detach() + task.bias.detach() - y
    grads = gradients(task, (x, y))
    torch.testing.assert_close(grads["weight"], 2 * x.T @ residual / len(y))
    torch.testing.assert_close(grads["bias"], (2 * residual.mean()).reshape(1))
    # the reference solves the normal equations
    ref = task.cached_reference()
    design = torch.cat([x.double(), torch.ones(40, 1, dtype=torch.float64)], 1)
    normal = torch.linalg.solve(design.T @ design, design.T @ y.double())
    torch.testing.assert_close(torch.cat([ref["w"], ref["b"]]), normal)
    assert ref["loss"] == pytest.approx(float(torch.mean((design @ normal - y.double()) ** 2)))


def test_linreg_seed_data_and_no_bias():
    task = LinRegTask(data={"source": "seed"}, bias=False)
    x, y = task.full_batch()
    assert x[:, 0].tolist() == [1, 2, 3, 4, 5] and y.tolist() == [2, 4, 6, 8, 10]
    assert task.loss((x, y)).item() == pytest.approx(44.0)  # w = 0, as the seed's epoch 1
    assert set(task.solution()) == {"w"}


def test_lowrank_gradient_and_eckart_young_reference():
    torch.manual_seed(0)
    task = LowRankTask(matrix={"source": "random", "rows": 7, "cols": 5, "seed": 4}, rank=2)
    (a,) = task.full_batch()
    u, v = task.U.detach(), task.V.detach()
    grads = gradients(task, (a,))
    torch.testing.assert_close(grads["U"], -2 * (a - u @ v.T) @ v)
    torch.testing.assert_close(grads["V"], -2 * (a - u @ v.T).T @ u)
    ref = task.cached_reference()
    s = torch.linalg.svdvals(a.double())
    assert torch.linalg.matrix_rank(ref["UVt"]).item() == 2
    assert float(ref["loss"]) == pytest.approx(float((s[2:] ** 2).sum()))
    assert float(torch.sum((a.double() - ref["UVt"]) ** 2)) == pytest.approx(float(ref["loss"]))


@pytest.mark.parametrize(("rows", "cols"), [(40, 25), (25, 40)])
def test_lowrank_reference_from_the_gram_matches_the_full_svd(rows, cols):
    task = LowRankTask(matrix={"source": "random", "rows": rows, "cols": cols, "condition": 100.0, "seed": 1}, rank=6)
    a = task.matrix.double()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    ref = task.reference()
    torch.testing.assert_close(ref["UVt"], u[:, :6] @ torch.diag(s[:6]) @ vh[:6], rtol=0, atol=1e-12)
    torch.testing.assert_close(ref["loss"], (s[6:] ** 2).sum(), rtol=1e-10, atol=0)


def test_lowrank_distances_by_blocks_are_the_base_class_ones():
    from descend.tasks import lowrank

    task = LowRankTask(matrix={"source": "random", "rows": 30, "cols": 20, "seed": 2}, rank=3)
    loss = task.loss(task.full_batch()).detach()
    expected = Task.distances(task, loss)  # the whole UVt against the cached reference at once
    lowrank.BLOCK, before = 50, lowrank.BLOCK  # blocks of 2 rows of 20
    try:
        ours = task.distances(loss)
    finally:
        lowrank.BLOCK = before
    torch.testing.assert_close(ours["ref/excess_loss"], expected["ref/excess_loss"], rtol=1e-12, atol=1e-14)
    # U·Vᵀ is a float32 product, rounded per entry a little differently for a block of rows
    torch.testing.assert_close(ours["ref/rel_error"], expected["ref/rel_error"], rtol=1e-6, atol=0)
    assert "reconstruction_rel_error" in ours


def test_lowrank_saves_the_product_only_while_it_is_small():
    from descend.tasks.lowrank import SAVED_PRODUCT

    small = LowRankTask(matrix={"source": "random", "rows": 8, "cols": 6}, rank=2)
    torch.testing.assert_close(small.solution()["UVt"], small.U.detach() @ small.V.detach().T)
    large = LowRankTask(matrix={"source": "random", "rows": 1024, "cols": SAVED_PRODUCT // 1024 + 1, "rank": 3}, rank=3)
    assert set(large.solution()) == {"U", "V"}


@pytest.mark.parametrize("rank", [0, 6, -1])
def test_lowrank_refuses_ranks_outside_1_to_min_m_n(rank):
    with pytest.raises(ConfigError, match=r"task.rank=.* \(the matrix is 5x8\)"):
        LowRankTask(matrix={"source": "random", "rows": 5, "cols": 8}, rank=rank)


def test_mlp_split_standardisation_and_shapes():
    task = MLPTask(data={"source": "teacher", "rows": 200, "features": 3, "noise": 0.1, "seed": 1},
                   model={"hidden": [8, 8], "activation": "relu", "dropout": 0.1})
    assert (len(task.y_train), len(task.y_val), len(task.y_test)) == (160, 20, 20)
    # statistics from the training split only
    assert abs(float(task.x_train.mean())) < 1e-5 and float(task.y_train.std()) == pytest.approx(1.0, abs=1e-5)
    assert task(task.x_val).shape == (20,)
    assert task.noise_floor == pytest.approx(0.01)
    dims = [m.out_features for m in task.net if isinstance(m, torch.nn.Linear)]
    assert dims == [8, 8, 1] and any(isinstance(m, torch.nn.Dropout) for m in task.net)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": {"activation": "swish"}}, "activation"),
        ({"model": {"hidden": [0]}}, "hidden"),
        ({"split": [0.5, 0.2, 0.2]}, "summing to 1"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_mlp_refuses_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MLPTask(data={"source": "sin", "rows": 50}, **{"model": {}, **kwargs})


def test_split_rows_is_seeded_and_disjoint():
    a, b = split_rows(100, [0.7, 0.2, 0.1], seed=5), split_rows(100, [0.7, 0.2, 0.1], seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(100))


def test_autograd_gradient_of_a_quadratic_form():
    # notebook 002's check: ∇(½ xᵀAx) = ½(A + Aᵀ)x, the closed form every task test above relies on
    a = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    (0.5 * x @ a @ x).backward()
    torch.testing.assert_close(x.grad, 0.5 * (a + a.T) @ x.detach())
    assert math.isfinite(float(x.grad.norm()))


def test_solution_files_of_a_large_lowrank_hold_the_factors_in_float32(tmp_path):
    import numpy as np

    from descend.results import write_solution

    task = LowRankTask(matrix={"source": "random", "rows": 600, "cols": 500, "rank": 4}, rank=4)
    write_solution(tmp_path, task.solution())
    factors = (600 + 500) * 4 * 4  # bytes of U and V in float32
    for name in ("solution.pt", "solution.npz"):
        assert factors < (tmp_path / name).stat().st_size < factors + 4096, name  # no 600×500 product
    arrays = np.load(tmp_path / "solution.npz")
    assert arrays["U"].dtype == np.float32 and sorted(arrays.files) == ["U", "V"]
