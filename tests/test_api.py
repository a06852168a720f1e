"""descend's Python API: the same runs as the CLI's, in-process and repeatable, and a table of runs."""

from __future__ import annotations

import gc
import logging
import sys

import pytest
import torch

import descend
from conftest import QUIET, metrics, only_run, run_cli, scalars

RUN = ["task=inverse", "trainer.max_steps=60", "optimizer.lr=0.3"]


def tree(folder) -> set[str]:
    """A run folder's files, less the event files' names (they carry a time and a host name)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "tfevents" not in p.name}


def test_train_writes_what_the_cli_writes(tmp_path, monkeypatch):
    cli, api = tmp_path / "cli", tmp_path / "api"
    cli.mkdir(), api.mkdir()
    run_cli(*RUN, *QUIET, cwd=cli)
    monkeypatch.chdir(api)
    run = descend.train(*RUN, *QUIET)
    expected = only_run(cli)
    assert run.folder.resolve() == only_run(api).resolve()
    assert tree(run.folder) == tree(expected)
    for saved in ("config.yaml", "overrides.yaml"):
        assert (run.folder / ".hydra" / saved).read_text() == (expected / ".hydra" / saved).read_text()
    want = metrics(expected)
    assert run.status == want["status"] == "completed" and run.steps == want["steps"] == 60
    assert run.metrics == want["metrics"]  # the same numbers, exactly
    solution = torch.load(expected / "solution.pt", weights_only=True)
    assert torch.equal(run.solution["W"], solution["W"])
    curves, reference = run.curves, scalars(expected)
    assert set(curves) == set(reference)
    assert dict(zip(curves["train/loss"].steps, curves["train/loss"].values)) == reference["train/loss"]


def test_train_is_repeatable_in_one_process_and_leaves_the_callers_logging(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    first = descend.train(*RUN, quiet=True)
    second = descend.train("task=lowrank", "trainer.max_steps=20", task__rank=1, quiet=True)  # keyword overrides
    assert root.handlers == handlers and root.level == level
    assert capsys.readouterr() == ("", "")  # quiet
    assert first.folder != second.folder and second.config.task.rank == 1
    third = descend.train(*RUN, quiet=True)
    assert third.metrics == first.metrics  # the same seed, the same numbers
    assert "descend: inverse completed after 60 steps" in (third.folder / "train.log").read_text()


def test_bad_input_raises_the_clis_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(descend.DescendError, match="task=nope is unknown; choose one of"):
        descend.train("task=nope")
    with pytest.raises(descend.DescendError, match="did you mean optimizer.lr"):
        descend.train(optimizer__lrr=0.1)
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(descend.DescendError, match="no metrics.json here"):
        descend.load(tmp_path)


def test_a_diverged_run_is_a_result_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = descend.train("optimizer.lr=2", quiet=True)
    assert run.status == "diverged" and "diverged at step" in run.error


def test_resume_continues_the_run_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    straight = descend.train(*RUN[:2], "trainer.max_steps=80", quiet=True)
    short = descend.train(*RUN[:2], "trainer.max_steps=40", quiet=True)
    longer = short.resume("trainer.max_steps=80", quiet=True)
    assert longer.folder == short.folder and longer.steps == 80
    assert torch.equal(longer.solution["W"], straight.solution["W"])


def test_sweep_returns_every_job_with_any_launcher_and_runs_answers_best_lr_per_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    basic = descend.sweep("task=inverse", "optimizer.lr=0.1,0.46,0.9", "trainer.max_steps=30", quiet=True)
    together = descend.sweep("task=inverse", "optimizer.lr=0.1,0.46,0.9", "trainer.max_steps=30", launcher="population", quiet=True)
    assert gc.get_freeze_count() == 0  # the population's jobs are the caller's collector's again
    assert [r.folder.name for r in basic] == [r.folder.name for r in together] == [
        "00_optimizer.lr=0.1", "01_optimizer.lr=0.46", "02_optimizer.lr=0.9"]
    assert [r.metrics["loss"] == pytest.approx(t.metrics["loss"], rel=1e-5) for r, t in zip(basic, together)] == [True] * 3
    descend.sweep("task=linreg", "optimizer.lr=0.01,0.05", "trainer.max_steps=30", quiet=True)
    single = descend.train("task=linreg", "optimizer.lr=0.02", "trainer.max_steps=30", quiet=True)

    table = descend.runs("outputs", status="completed")
    assert len(table) == 9  # 3 + 3 + 2 sweep jobs and one run
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    best = {}
    for row in rows:
        if row["task"] not in best or row["loss"] < best[row["task"]]["loss"]:
            best[row["task"]] = row
    assert best["inverse"]["optimizer.lr"] == 0.9 and best["linreg"]["optimizer.lr"] == 0.05
    assert [isinstance(row["sweep"], str) for row in rows if row["folder"] == str(single.folder)] == [False]  # None (NaN in pandas)
    only = descend.runs("outputs", task="inverse", optimizer__lr=0.46)
    assert len(only) == 2  # the job of each inverse sweep
    small = descend.runs("outputs", loss=lambda v: v is not None and v < best["inverse"]["loss"] * 1.0001)
    assert len(small) >= 1


def test_runs_without_pandas_is_a_list_of_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = descend.train(*RUN, quiet=True)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    rows = descend.runs(tmp_path / "outputs")
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert row["folder"] == str(run.folder) and row["status"] == "completed" and row["steps"] == 60
    assert row["optimizer.lr"] == 0.3 and row["loss"] == run.metrics["loss"] and row["task._target_"].endswith("InverseTask")


def test_import_descend_is_light():
    import subprocess

    code = "import sys, descend; print(sorted(m for m in ('torch', 'hydra', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Python and notebooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["run"].status == "completed" and scope["longer"].steps == 400
    assert scope["same"].folder == scope["run"].folder and len(scope["jobs"]) == 3
    assert list(scope["best"]["task"]) == ["inverse"]
