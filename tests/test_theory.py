"""What theory predicts for the quadratic tasks, checked against autograd and against real runs;
the quadratic and eigen tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import QUIET, metrics, one_line_error, only_run, run_cli, scalars
from descend.tasks.eigen import EigenTask, line_angle
from descend.tasks.inverse import InverseTask
from descend.tasks.linreg import LinRegTask
from descend.tasks.quadratic import QuadraticTask
from descend.theory import Spectrum, plain_sgd_lr

SEED_INVERSE = {"matrix": {"source": "diag", "values": [1.0, 2.0, 3.0, 4.0]}}


def tasks() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "inverse": InverseTask(**SEED_INVERSE),
        "linreg": LinRegTask(data={"source": "linear", "features": 3, "rows": 40, "noise": 0.1}, init="randn"),
        "linreg_standardised": LinRegTask(data={"source": "linear", "features": 2, "rows": 30, "bias": 5.0}, init="randn", standardize=True),
        "quadratic": QuadraticTask(matrix={"source": "spd", "rows": 6, "condition": 20.0}, init="randn"),
    }


@pytest.mark.parametrize("name", ["inverse", "linreg", "linreg_standardised", "quadratic"])
def test_hessian_and_excess_loss_are_those_of_the_loss(name):
    """The task's Hessian block and error rows give loss − optimum exactly, and the Hessian is autograd's."""
    task = tasks()[name].double()
    block, error = task.quadratic_form()
    hessian = autograd_hessian(task)
    rows = error.shape[0]
    torch.testing.assert_close(hessian, torch.kron(torch.eye(rows, dtype=torch.float64), block))
    excess = task.loss(task.full_batch()).item() - float(task.cached_reference()["loss"])
    predicted = 0.5 * float(sum(e @ block @ e for e in error))
    assert predicted == pytest.approx(excess, rel=1e-9)


def autograd_hessian(task) -> torch.Tensor:
    """The loss's Hessian over all parameters, flattened in order, by differentiating the gradient."""
    params = list(task.parameters())
    gradient = torch.cat([g.flatten() for g in torch.autograd.grad(task.loss(task.full_batch()), params, create_graph=True)])
    rows = [torch.cat([h.flatten() for h in torch.autograd.grad(g, params, retain_graph=True)]) for g in gradient]
    return torch.stack(rows)


def test_seed_inverse_spectrum_is_what_the_readme_says():
    task = InverseTask(**SEED_INVERSE)
    spectrum = Spectrum.of(*task.quadratic_form())
    np.testing.assert_allclose(spectrum.eigenvalues.numpy(), [0.125, 0.5, 1.125, 2.0])
    assert spectrum.lr_critical == pytest.approx(1.0) and spectrum.lr_optimal == pytest.approx(2 / 2.125)
    assert spectrum.condition_number == pytest.approx(16.0)
    assert spectrum.contraction(0.46051701859880914) == pytest.approx(1 - 0.46051701859880914 * 0.125)
    assert spectrum.contraction(1.05) > 1  # diverges


def test_predicted_curve_is_plain_gradient_descent():
    task = tasks()["quadratic"].double()
    spectrum = Spectrum.of(*task.quadratic_form())
    optimum = float(task.cached_reference()["loss"])
    optimizer = torch.optim.SGD(task.parameters(), lr=0.7)
    for step in range(30):
        measured = task.loss(task.full_batch()).item() - optimum
        assert spectrum.excess_loss(0.7, step) == pytest.approx(measured, rel=1e-9, abs=1e-14)
        optimizer.zero_grad()
        task.loss(task.full_batch()).backward()
        optimizer.step()


@pytest.mark.parametrize(("kwargs", "plain"), [({}, True), ({"momentum": 0.9}, False), ({"weight_decay": 1e-3}, False)])
def test_only_plain_sgd_gets_a_predicted_curve(kwargs, plain):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, **kwargs)
    assert (plain_sgd_lr(optimizer, has_scheduler=False, clipping=None) == 0.1) == plain
    assert plain_sgd_lr(optimizer, has_scheduler=True, clipping=None) is None
    assert plain_sgd_lr(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]), False, None) is None


def test_quadratic_reference_and_gradient():
    task = tasks()["quadratic"].double()
    reference = task.cached_reference()
    torch.testing.assert_close(task.a @ reference["x"], task.b)
    task.loss(task.full_batch()).backward()
    torch.testing.assert_close(task.x.grad, task.a @ task.x.detach() - task.b)  # ∇ = Ax − b for a symmetric A


def test_eigen_task_reference_gradient_and_power_method():
    torch.manual_seed(0)
    task = EigenTask(matrix={"source": "gram", "rows": 8, "cols": 8, "seed": 3}).double()
    top = float(torch.linalg.eigvalsh(task.a)[-1])
    assert float(task.cached_reference()["loss"]) == pytest.approx(-top)
    v = task.v.detach().clone()
    task.loss(task.full_batch()).backward()
    rayleigh = v @ task.a @ v / (v @ v)
    torch.testing.assert_close(task.v.grad, -2 * (task.a @ v - rayleigh * v) / (v @ v))
    errors = task.errors("baseline", task.power_iterate(200))
    assert float(errors["baseline/eigenvalue_rel_error"]) < 1e-8 and float(errors["baseline/angle_deg"]) < 1e-2


@pytest.mark.parametrize("angle", [1e-15, 1e-11, 3e-8, 1e-4, 0.7, math.pi / 2 - 1e-12])
def test_the_angle_to_an_eigenvector_keeps_its_digits_near_zero(angle):
    # arccos of a cosine near 1 returns 0 or ~1.5e-8 for every angle below ~1e-8 rad
    e = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    ortho = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    v = 5 * (math.cos(angle) * e + math.sin(angle) * ortho)
    for sign in (1, -1):  # an eigenvector's sign is arbitrary: the angle is between lines
        assert float(line_angle(sign * v, e)) == pytest.approx(angle, rel=1e-14)


def test_matrices_that_are_not_spd_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "skew.npy", np.array([[1.0, 2.0], [0.0, 1.0]]))
    np.save(tmp_path / "indefinite.npy", np.array([[1.0, 0.0], [0.0, -1.0]]))
    for name, expected in (("skew", "not symmetric"), ("indefinite", "not positive definite")):
        proc = run_cli("task=quadratic", f"task.matrix.path={name}.npy", *QUIET, cwd=tmp_path, expect=2)
        assert expected in one_line_error(proc)
    proc = run_cli("task=eigen", "task.matrix.path=indefinite.npy", *QUIET, cwd=tmp_path, expect=2)
    assert "not positive semi-definite" in one_line_error(proc)


@pytest.mark.parametrize("task", [
    ["task=inverse", "optimizer.lr=0.9"],
    ["task=linreg", "task.data.source=linear", "task.data.features=3", "task.data.noise=0.1", "optimizer.lr=0.05"],
    ["task=quadratic", "optimizer.lr=1.5"],
    ["task=inverse", "optimizer=momentum", "optimizer.lr=0.3"],
    ["task=quadratic", "optimizer=momentum", "optimizer.lr=0.2", "optimizer.nesterov=true"],
    ["task=linreg", "task.data.source=linear", "task.data.features=3", "optimizer.lr=0.05", "optimizer.momentum=0.5",
     "optimizer.weight_decay=0.05"],
    ["task=inverse", "optimizer.lr=0.9", "optimizer.weight_decay=0.02"],
    ["task=inverse", "optimizer.lr=0.9", "scheduler=step", "scheduler.step_size=20"],
    ["task=quadratic", "optimizer=momentum", "optimizer.lr=0.3", "scheduler=exponential", "scheduler.gamma=0.98"],
    ["task=inverse", "optimizer=momentum", "optimizer.lr=0.5", "optimizer.nesterov=true", "optimizer.weight_decay=0.01",
     "scheduler=cosine"],
], ids=["inverse", "linreg", "quadratic", "momentum", "nesterov", "momentum_weight_decay", "weight_decay", "step",
        "exponential", "cosine_nesterov_weight_decay"])
def test_theory_curve_agrees_with_the_measured_one(tmp_path, task):
    run_cli(*task, "trainer.precision=64-true", "trainer.max_steps=150", "trainer.log_every_n_steps=1", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    series = scalars(run)
    measured, predicted = series["ref/excess_loss"], series["theory/excess_loss"]
    start = measured[0]
    compared = [s for s, v in measured.items() if v > 1e3 * np.finfo(np.float64).eps * start]
    assert len(compared) > 10
    for step in compared:
        assert predicted[step] == pytest.approx(measured[step], rel=1e-4), step
    assert set(series["theory/log10_excess_loss"]) == set(predicted)  # beside ref/log10_excess_loss
    theory = metrics(run)["theory"]
    assert theory["lr_critical"] == pytest.approx(series["theory/lr_critical"][0], rel=1e-6) and theory["contraction"] < 1


def test_an_lr_above_lr_critical_is_warned_and_adam_gets_no_curve(tmp_path):
    proc = run_cli("optimizer.lr=1.05", *QUIET, cwd=tmp_path, expect=3)
    assert "warning: optimizer.lr=1.05 is above lr_critical = 1 (2/λmax)" in proc.stdout
    assert "lower it below lr_critical = 1 (fastest: 0.9412)" in one_line_error(proc)
    (tmp_path / "m").mkdir()
    proc = run_cli("optimizer=adam", "optimizer.lr=0.1", "trainer.max_steps=20", *QUIET, cwd=tmp_path / "m")
    assert proc.stdout.count("no predicted curve: Adam's update is not linear in the error") == 1
    run = only_run(tmp_path / "m")
    assert "theory/excess_loss" not in scalars(run) and "theory/lr_optimal" in scalars(run)
    assert "contraction" not in metrics(run)["theory"] and metrics(run)["theory"]["lr_critical"] == pytest.approx(1.0)


def test_momentum_above_its_limit_is_warned_and_its_numbers_stated(tmp_path):
    """Heavy ball at β = 0.9 on the seed inverse (λmax = 2): lr_limit (2 + 2β)/λmax = 1.9; Polyak's optimum."""
    proc = run_cli("optimizer=momentum", "optimizer.lr=3", "trainer.max_steps=300", *QUIET, cwd=tmp_path, expect=3)
    assert "warning: optimizer.lr=3 is above lr_limit = 1.9 ((2+2β)/λmax, heavy ball)" in proc.stdout
    assert "grows the error" in proc.stdout
    assert "lower it below lr_limit = 1.9, this optimiser's largest stable step size" in one_line_error(proc)
    numbers = metrics(only_run(tmp_path))["theory"]
    assert numbers["lr_limit"] == pytest.approx(1.9) and numbers["contraction"] > 1
    kappa = 16.0
    assert numbers["heavy_ball_lr_optimal"] == pytest.approx(4 / (math.sqrt(2) + math.sqrt(0.125)) ** 2)
    assert numbers["heavy_ball_rate"] == pytest.approx((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1))
    assert numbers["heavy_ball_momentum_optimal"] == pytest.approx(numbers["heavy_ball_rate"] ** 2)


def test_eigen_runs_with_its_power_method_baseline(tmp_path):
    run_cli("task=eigen", "trainer.max_steps=300", "trainer.log_every_n_steps=10", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    series = scalars(run)
    for prefix in ("ref", "baseline"):
        errors = series[f"{prefix}/eigenvalue_rel_error"]
        assert errors[0] > 1e-2 and errors[max(errors)] < 1e-6, prefix
    assert set(series["baseline/angle_deg"]) == set(series["ref/angle_deg"])  # the same step counts
    assert metrics(run)["metrics"]["ref/eigenvalue_rel_error"] < 1e-6


def test_a_learning_rate_sweep_of_a_quadratic_task_states_the_theory(tmp_path):
    run_cli("-m", "optimizer.lr=0.5,0.9", "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    summary = (sweep / "summary.md").read_text()
    assert "inverse: lr_critical = 1 (2/λmax" in summary and "lr_optimal = 0.9412" in summary


def test_excess_loss_in_floats_is_the_torch_formula_and_overflows_to_inf():
    """Spectrum.excess_loss sums in Python floats; the formula in float64 torch gives the same,
    overflow included (an unstable lr: inf; an unstable direction the start has no energy in: nan)."""
    spectra = [Spectrum.of(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])) / 8, torch.rand(4, 4, generator=torch.Generator().manual_seed(3))),
               Spectrum(torch.tensor([0.1, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64))]
    for spectrum in spectra:
        for lr in (0.01, 0.46, 0.9412, 1.2, 5.0):
            for steps in (0, 1, 10, 2000, 100_000):
                factors = (1 - lr * spectrum.eigenvalues).square().pow(steps)
                expected = float(0.5 * (spectrum.eigenvalues * factors * spectrum.energies).sum())
                got = spectrum.excess_loss(lr, steps)
                assert got == pytest.approx(expected, rel=1e-13, abs=0) or (math.isnan(got) and math.isnan(expected)), (lr, steps)
    assert math.isinf(spectra[0].excess_loss(5.0, 2000)) and math.isnan(spectra[1].excess_loss(5.0, 2000))


def test_the_theory_line_says_growth_above_lr_critical_and_stays_at_it():
    from descend.theory import Spectrum, describe

    spectrum = Spectrum.of(2.0 / 16 * torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])) ** 2, torch.ones(4, 4))  # the seed inverse
    lines = {lr: describe(spectrum.summary(lr), lr) for lr in (0.46, 1.0, 1.04)}
    assert "shrinks the error by a factor 0.9425 per step" in lines[0.46]
    assert "stays" in lines[1.0] and "shrinks" not in lines[1.0] and "grows" not in lines[1.0]
    assert "grows the error by a factor 1.08 per step" in lines[1.04] and "shrinks" not in lines[1.04]


def composed(*overrides: str):
    from hydra import compose, initialize_config_dir

    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("task", ["inverse", "linreg", "quadratic"])
def test_lr_auto_is_theorys_lr_optimal(task):
    from descend.build import build_task

    built = build_task(composed(f"task={task}", "optimizer.lr=auto"))
    lr = built.configure_optimizers().param_groups[0]["lr"]
    assert lr == Spectrum.of(*built.quadratic_form()).lr_optimal
    assert lr != 1.0  # not the stand-in the factory was built with


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer=adam"], "optimizer.lr=auto is theory's lr_optimal for plain gradient descent"),
    (["task=mlp"], "optimizer.lr=auto needs a quadratic task"),
    (["optimizer=momentum"], r"optimizer.lr=auto is plain SGD's lr_optimal, not the best step with optimizer.momentum=0.9; give both "
                             r"numbers: heavy ball is fastest at optimizer.lr=1.28 optimizer.momentum=0.36"),
])
def test_lr_auto_is_refused_where_theory_does_not_apply(overrides, message):
    from descend.build import build_task
    from descend.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_task(composed(*overrides, "optimizer.lr=auto"))


def test_a_run_far_from_its_optimum_is_told_the_lr_that_converges():
    from descend.results import far_from_optimum

    theory = {"condition_number": 1.259, "lr_optimal": 0.5025}
    record = {"status": "completed", "steps": 100, "metrics": {"ref/rel_error": 1.43}, "theory": theory}
    [line] = far_from_optimum(record)
    assert line.startswith("warning: ref/rel_error 1.43 after 100 steps") and "optimizer.lr=0.5025" in line
    assert "about 4 steps" in line  # (κ−1)/(κ+1) = 0.115 per step: 0.115⁴ < 1e-3
    assert "(theory's lr_optimal; optimizer.lr=auto takes it)" not in line  # Adam's theory has no lr_limit: not plain SGD
    assert far_from_optimum({**record, "metrics": {"ref/rel_error": 0.01}}) == []
    assert far_from_optimum({**record, "status": "diverged"}) == []
    plain = {**theory, "lr_critical": 0.9, "lr_limit": 0.9}
    assert "(theory's lr_optimal; optimizer.lr=auto takes it)" in far_from_optimum({**record, "theory": plain})[0]
    heavy = {**plain, "lr_limit": 1.71, "heavy_ball_lr_optimal": 1.28, "heavy_ball_momentum_optimal": 0.36, "heavy_ball_rate": 0.6}
    assert far_from_optimum({**record, "theory": heavy})[0].endswith("heavy ball at optimizer.lr=1.28 optimizer.momentum=0.36")


@pytest.mark.parametrize(("kwargs", "scheduler"), [
    ({"momentum": 0.8, "dampening": 0.3}, None),
    ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, None),
    ({"momentum": 0.9}, lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.6, total_steps=60)),  # lr and β per step
    ({"momentum": 0.5, "dampening": 0.5, "weight_decay": 0.05}, lambda opt: torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)),
])
def test_the_linear_prediction_is_torchs_own_loop(kwargs, scheduler):
    """theory.LinearPrediction against torch.optim.SGD itself, step by step, in float64."""
    from descend.theory import RunTheory, Schedule, not_linear

    task = tasks()["inverse"].double()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.4, **kwargs)
    sched = scheduler(optimizer) if scheduler else None
    assert not_linear(optimizer, sched, None) is None
    block, error = task.quadratic_form()
    run = RunTheory(Spectrum.of(block, error), 0, None)
    run.predict(Schedule(optimizer, sched, 0), error, task.weight.detach().clone(), None, plain=sched is None)
    optimum = float(task.cached_reference()["loss"])
    for step in range(60):
        measured = task.loss(task.full_batch()).item() - optimum
        assert run.excess_loss(step) == pytest.approx(measured, rel=1e-9, abs=1e-13), step
        optimizer.zero_grad()
        task.loss(task.full_batch()).backward()
        optimizer.step()
        if sched is not None:
            sched.step()


def test_what_is_not_linear_is_named():
    from descend.theory import not_linear

    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = torch.optim.SGD(params, lr=0.1)
    assert not_linear(torch.optim.RMSprop(params), None, None) == "RMSprop's update is not linear in the error"
    assert "clipping" in not_linear(sgd, None, 1.0)
    assert "ReduceLROnPlateau" in not_linear(sgd, torch.optim.lr_scheduler.ReduceLROnPlateau(sgd), None)
    assert not_linear(torch.optim.LBFGS(params), None, None).startswith("LBFGS")


def test_a_momentum_sweep_draws_the_stability_boundary_and_the_heavy_balls_optimum(tmp_path):
    """quadratic's Hessian spans 0.1 … 1: heavy ball is stable for lr < 2 + 2β, fastest at
    α* = 4/(1 + √0.1)², β* = ((1 − √0.1)/(1 + √0.1))²."""
    run_cli("-m", "task=quadratic", "optimizer=momentum", "optimizer.lr=0.5,2.5,3.5", "optimizer.momentum=0,0.5,0.9",
            "trainer.max_steps=60", "callbacks.images.every_n_steps=0", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    summary = (sweep / "summary.md").read_text()
    spectrum = Spectrum(torch.tensor([0.1, 1.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    alpha, beta = 4 / (1 + math.sqrt(spectrum.smallest)) ** 2, ((1 - math.sqrt(0.1)) / (1 + math.sqrt(0.1))) ** 2
    assert f"lr α* = {alpha:.4g}, momentum β* = {beta:.4g}" in summary and "stable for lr < (2 + 2β)/λmax" in summary
    # past the boundary: lr 2.5 at β = 0 (limit 2), lr 3.5 at β = 0 and 0.5 (limit 3); all diverge, none inside
    assert "Jobs past the boundary: 3, of which 3 diverged (and 0 diverged inside it)." in summary
    assert (sweep / "momentum.png").stat().st_size > 10_000


def test_a_resumed_momentum_run_is_predicted_from_its_checkpoint(tmp_path):
    """The prediction restarts at the checkpoint's step with the optimiser's momentum buffer and the
    scheduler's state restored: it still agrees with the measured curve after the resume."""
    common = ["task=quadratic", "optimizer=momentum", "optimizer.lr=0.3", "scheduler=exponential", "scheduler.gamma=0.99",
              "trainer.precision=64-true", "trainer.log_every_n_steps=1", "callbacks.checkpoint.min_interval_s=0", *QUIET]
    run_cli(*common, "trainer.max_steps=40", cwd=tmp_path)
    run = only_run(tmp_path)
    run_cli(f"resume={run}", "trainer.max_steps=120", *QUIET, cwd=tmp_path)
    series = scalars(run)
    measured, predicted = series["ref/excess_loss"], series["theory/excess_loss"]
    compared = [s for s in range(41, 121) if measured[s] > 1e3 * np.finfo(np.float64).eps * measured[0]]
    assert len(compared) > 40
    for step in compared:
        assert predicted[step] == pytest.approx(measured[step], rel=1e-4), step


def test_lbfgs_shows_no_closed_form_step_sizes(tmp_path):
    proc = run_cli("optimizer=lbfgs", "trainer.max_steps=5", "logger=[tensorboard,csv]", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    console = proc.stdout + proc.stderr
    assert "theory" not in console and "lr_optimal" not in console and "lr_critical" not in console
    assert "theory" not in metrics(run)
    assert not [tag for tag in scalars(run) if tag.startswith("theory/")]
    assert "theory" not in "".join(p.read_text() for p in run.rglob("*.csv"))
    assert "theory" not in (run / "train.log").read_text()


def test_momentum_of_one_or_more_converges_at_no_lr(tmp_path):
    """The heavy ball's 2×2 map has determinant β: from β = 1 on no lr is stable, so theory's limit is 0,
    the warning names the momentum (not the lr), and so does the divergence error."""
    from descend.theory import SGDStep

    assert SGDStep(0.1, 1.5).lr_limit(2.0)[0] == 0.0 and SGDStep(0.1, 1.0).lr_limit(2.0)[0] == 0.0
    assert SGDStep(0.1, 0.5).lr_limit(2.0)[0] == pytest.approx(1.5)
    proc = run_cli("optimizer=momentum", "optimizer.momentum=1.5", *QUIET, cwd=tmp_path, expect=3)
    assert "warning: optimizer.momentum=1.5 is 1 or more" in proc.stdout and "take a momentum below 1" in proc.stdout
    assert "optimizer.momentum=1.5 is 1 or more, where heavy-ball momentum converges at no learning rate" in proc.stderr
    assert "lower it below lr_limit" not in proc.stderr


def test_a_populations_predictions_are_each_members_own_bit_for_bit():
    """theory.excess_losses (every member's plain-SGD prediction, a term at a time for all) gives
    each member's own Spectrum.excess_loss exactly, diverging learning rates (inf) included, and
    falls back to member by member where the members differ in their start."""
    import random

    from descend.theory import RunTheory, SGDStep, Spectrum, excess_losses

    generator = random.Random(5)
    spectrum = Spectrum(torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=torch.float64), torch.tensor([0.3, 1e-3, 2.0, 0.7], dtype=torch.float64))
    lrs = [generator.uniform(0.001, 0.2) for _ in range(50)] + [0.125, 0.2, 0.13]  # 0.13 > 2/16: diverges
    theories = []
    for lr in lrs:
        member = RunTheory(Spectrum(spectrum.eigenvalues.clone(), spectrum.energies.clone()), 0, None)
        member.settings = SGDStep(lr)
        theories.append(member)
    for step in (0, 1, 7, 100, 2000, 10**5):
        assert excess_losses(theories, step) == [t.excess_loss(step) for t in theories]
    theories[3].start = 10  # a resumed member
    assert excess_losses(theories, 500) == [t.excess_loss(500) for t in theories]
