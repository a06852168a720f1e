"""A task value that is wrong whatever the data holds is refused before any folder exists: the
precheck (prechecks.checked_argv, which the CLI and the API call first) applies the task's own
check_config, the rules its constructor applies, so both say the same one line."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from conftest import QUIET, metrics, one_line_error, run_cli
from descend.errors import RefusedCommand, UserError
from descend.prechecks import absolute_paths, checked_argv, config_dir

TABLE = "x,y\n1,2\n2,4\n3,6\n"

# (overrides, what the one line says): one case per rule a task's constructor applies to its settings
BAD_TASK_VALUES = [
    (["task=lowrank", "task.rank=0"], "task.rank=0 must be an integer in 1..10 (the matrix is 10x10)"),
    (["task=lowrank", "task.rank=11"], "task.rank=11 must be an integer in 1..10 (the matrix is 10x10)"),
    (["task=lowrank", "task.matrix.rows=6", "task.matrix.cols=3", "task.rank=4"], "task.rank=4 must be an integer in 1..3 (the matrix is 6x3)"),
    (["task=lowrank", "task.matrix.rows=0"], "task.matrix.rows=0 must be a positive integer"),
    (["task=lowrank", "task.matrix.rank=0"], "task.matrix.rank=0 must be an integer in 1..10"),
    (["task=lowrank", "task.matrix.condition=0.5"], "task.matrix.condition=0.5 must be >= 1"),
    (["task=lowrank", "task.matrix.noise=-0.1"], "task.matrix.noise=-0.1 must be >= 0"),
    (["task=lowrank", "task.init=rnd"], "task.init='rnd' is unknown; use one of rand, randn, zeros"),
    (["task=mlp", "task.model.activation=relux"], "task.model.activation='relux' is unknown; use one of relu, tanh, sigmoid, gelu"),
    (["task=mlp", "task.model.hidden=[64,0]"], "task.model.hidden=[64, 0] must be a list of positive layer sizes"),
    (["task=mlp", "task.model.dropout=1.5"], "task.model.dropout=1.5 must lie in [0, 1)"),
    (["task=mlp", "task.batch_size=0"], "task.batch_size=0 must be a positive integer"),
    (["task=mlp", "task.split=[0.5,0.5,0.5]"], "task.split=[0.5, 0.5, 0.5] must be three non-negative fractions"),
    (["task=mlp", "task.data.rows=20", "task.split=[0.98,0.01,0.01]"], "leaves an empty split of the 20 rows"),
    (["task=mlp", "task.data.source=nope"], "task.data.source='nope' is unknown"),
    (["task=linreg", "task.data.source=linear", "task.data.noise=-1"], "task.data.noise=-1 must be >= 0"),
    (["task=linreg", "task.data.source=linear", "task.data.features=2", "task.data.weights=[1]"], "task.data.weights has 1 values but task.data.features=2"),
    (["task=linreg", "task.standardize=maybe"], "task.standardize='maybe' must be auto (files only), true or false"),
    (["task=linreg", "task.steps_per_epoch=0"], "task.steps_per_epoch=0 must be a positive integer"),
    (["task=linreg", "task.data.path=table.csv"], "task.data.target is not set; name the column to predict, one of: x, y"),
    (["task=mlp", "task.data.path=table.csv", "task.data.target=nope"], "no column named 'nope'; columns are: x, y"),
    (["task=mlp", "task.data.path=table.csv", "task.data.target=y", "task.data.columns=[x,z]"], "task.data.columns names ['z']"),
    (["task=linreg", "task.data.path=table.csv", "task.data.target=y", "task.data.missing=fill"], "task.data.missing='fill' is unknown"),
    (["task=inverse", "task.matrix.values=[1,2,0]"], "task.matrix: the matrix is singular or nearly so"),
    (["task=inverse", "task.matrix.values=[]"], "task.matrix.values is empty; give the diagonal"),
    (["task=inverse", "task.matrix.source=random", "task.matrix.rows=3", "task.matrix.cols=4"], "the matrix is 3x4; the inverse task needs a square matrix"),
    (["task=inverse", "task.max_condition=1"], "task.max_condition=1 must be a number > 1"),
    (["task=inverse", "task.matrix.source=nope"], "task.matrix.source='nope' is unknown"),
    (["task=quadratic", "task.b=[1,2]"], "task.b has 2 values but the matrix is 10x10"),
    (["task=quadratic", "task.matrix.source=diag", "+task.matrix.values=[1,-1]"], "the matrix is not positive definite"),
    (["task=eigen", "task.init=zeros"], "task.init=zeros gives v = 0"),
    (["task=eigen", "task.matrix.source=random", "task.matrix.cols=5"], "task.matrix: the matrix is 10x5; it must be square and symmetric"),
    (["task=eigen", "task.matrix.source=diag", "+task.matrix.values=[1,-1]"], "the matrix is not positive semi-definite"),
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    (tmp_path / "table.csv").write_text(TABLE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("overrides", "culprit"), BAD_TASK_VALUES, ids=[" ".join(o) for o, _ in BAD_TASK_VALUES])
def test_the_precheck_and_the_task_refuse_a_bad_value_with_the_same_line(in_tmp, overrides, culprit):
    """Refused by the precheck, and by the task's constructor with the same words: one rule."""
    from descend.build import build_task

    with pytest.raises(RefusedCommand) as refused:
        checked_argv([*overrides, *QUIET])
    assert culprit in str(refused.value) and "\n" not in str(refused.value)
    assert refused.value.code == 2
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=absolute_paths(overrides))
    with pytest.raises(UserError) as built:
        build_task(cfg)
    assert str(built.value) == str(refused.value)


@pytest.mark.parametrize(("overrides", "named"), [
    (["task=lowrank", "task.rank=0"], "task.rank=0 must be"),  # the new-user trial's two commands
    (["task=mlp", "task.model.activation=relux"], "task.model.activation='relux' is unknown; use one of"),
    (["task=mlp", "task.data.path=table.csv"], "task.data.target is not set; name the column"),
    (["task=inverse", "task.matrix.values=[1,2,0]"], "task.matrix: the matrix is singular"),
    (["trainer.gradient_clip_algorithm=foo"], "trainer.gradient_clip_algorithm='foo' is unknown; use norm or value"),
    # a population launcher's setting misspelt, with or without Hydra's '+' (which then failed in the launcher)
    (["-m", "hydra/launcher=population", "optimizer.lr=0.1,0.2", "hydra.launcher.pruner.rulee=halving"],
     "hydra.launcher.pruner.rulee is not a setting of the population launcher; did you mean hydra.launcher.pruner.rule?"),
    (["-m", "hydra/launcher=population", "optimizer.lr=0.1,0.2", "+hydra.launcher.pbt.intervall=50"],
     "did you mean hydra.launcher.pbt.interval?"),
    (["-m", "hydra/launcher=population", "optimizer.lr=0.1,0.2", "hydra.launcher.max_member=3"],
     "did you mean hydra.launcher.max_members?"),
])
def test_a_refused_value_exits_2_with_one_line_and_writes_nothing(tmp_path, overrides, named):
    (tmp_path / "table.csv").write_text(TABLE)
    proc = run_cli(*overrides, *QUIET, cwd=tmp_path, expect=2)
    line = one_line_error(proc)
    assert proc.stderr.strip().splitlines() == [line] and named in line  # all stderr holds: the key and the fix
    assert list(tmp_path.iterdir()) == [tmp_path / "table.csv"]  # no outputs/, no run folder


def test_a_sweep_is_refused_for_a_value_every_job_shares_and_runs_past_one_jobs(tmp_path):
    """A bad value every job has is refused before the sweep folder; one job's bad value fails
    that job alone, with its one line, as before (the precheck composes a swept key's first value,
    as it does for optimizer.lr=-1,0.1)."""
    shared = run_cli("-m", "task=mlp", "task.model.activation=relux", "optimizer.lr=0.01,0.02", *QUIET, cwd=tmp_path, expect=2)
    assert "task.model.activation='relux' is unknown" in one_line_error(shared)
    assert not (tmp_path / "outputs").exists()

    one = run_cli("-m", "task=lowrank", "task.rank=2,0", "trainer.max_steps=3", *QUIET, cwd=tmp_path, expect=1)
    assert "error: task.rank=0 must be an integer in 1..10" in one.stderr
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert [p.name for p in jobs] == ["00_task.rank=2", "01_task.rank=0"]
    assert metrics(jobs[0])["status"] == "completed"
    assert metrics(jobs[1])["status"] == "failed" and "task.rank=0" in metrics(jobs[1])["error"]
