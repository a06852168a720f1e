"""What a resume may change, what it refuses without writing anything, and what a record keeps."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml

from conftest import QUIET, metrics, one_line_error, only_run, run_cli, scalars

RUN = ["optimizer.lr=0.001", "trainer.max_steps=100", *QUIET]


def folder_digest(run) -> dict[str, str]:
    """Every file of a run folder and its bytes' hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("completed")
    run_cli(*RUN, cwd=cwd)
    return only_run(cwd)


@pytest.mark.parametrize(("overrides", "culprit"), [
    (["optimizer=adam"], "optimizer=adam cannot change on resume (the run has optimizer=sgd)"),
    (["scheduler=step"], "scheduler=step cannot change on resume (the run has scheduler=none)"),
    (["task.matrix.rows=5", "trainer.max_steps=300"], "task.matrix.rows=5 cannot change on resume (the run has task.matrix.rows=4)"),
    (["trainer.precision=64-true", "trainer.max_steps=300"], "trainer.precision=64-true cannot change on resume (the run has trainer.precision=32-true)"),
    (["optimizer.lr=0", "trainer.max_steps=300"], "optimizer.lr=0 must be a positive number"),
])
def test_a_refused_resume_is_one_line_and_leaves_the_run_byte_identical(completed, tmp_path, overrides, culprit):
    before = folder_digest(completed)
    proc = run_cli(f"resume={completed}", *overrides, cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    assert folder_digest(completed) == before


def test_a_completed_run_with_nothing_left_to_train_says_so_and_changes_nothing(completed, tmp_path):
    before = folder_digest(completed)
    for extra in ([], ["trainer.max_steps=100"], ["trainer.max_steps=50", "optimizer.lr=0.1"]):
        proc = run_cli(f"resume={completed}", *extra, cwd=tmp_path)
        assert "nothing to train" in proc.stdout and "resuming" not in proc.stdout
    assert folder_digest(completed) == before


def test_a_damaged_checkpoint_is_one_line_naming_it_and_changes_nothing(completed, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(completed, run)
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    before = folder_digest(run)
    line = one_line_error(run_cli(f"resume={run}", "trainer.max_steps=2000", cwd=tmp_path, expect=2))
    assert str(checkpoint) in line and "not a readable checkpoint" in line
    assert folder_digest(run) == before and metrics(run)["status"] == "completed"


def test_a_checkpoint_with_objects_weights_only_refuses_is_one_line_naming_ckpt_path(tmp_path):
    from omegaconf import OmegaConf

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"global_step": 5, "config": OmegaConf.create({"a": 1})}, foreign)
    line = one_line_error(run_cli(f"ckpt_path={foreign}", *RUN, cwd=tmp_path, expect=2))
    assert f"ckpt_path={foreign}" in line and "cannot be loaded safely" in line


def test_a_resume_applies_a_new_lr_from_its_step_and_records_it(tmp_path):
    run_cli(*RUN, cwd=tmp_path)
    run = only_run(tmp_path)
    run_cli(f"resume={run}", "optimizer.lr=0.1", "trainer.max_steps=300", cwd=tmp_path)
    record = metrics(run)
    assert record["status"] == "completed" and record["steps"] == 300
    assert [(r["step"], sorted(r["overrides"])) for r in record["resumed"]] == [(100, ["optimizer.lr=0.1", "trainer.max_steps=300"])]
    lr = scalars(run)["lr-SGD"]
    assert all(lr[s] == pytest.approx(0.001) for s in lr if s < 100)
    assert all(lr[s] == pytest.approx(0.1) for s in lr if s >= 100) and max(lr) == 300  # the last step too (the curves end where final/* stand)
    keys = [o.split("=")[0] for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())]
    assert len(keys) == len(set(keys))  # each key once, at its final value
    assert "optimizer.lr=0.1" in (run / ".hydra" / "overrides.yaml").read_text()
    # what the user typed: not the resume=, ckpt_path= and hydra.run.dir= descend hands Hydra (metrics.json records the resume)
    hydra_record = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["overrides"]["task"]
    for recorded in (keys, [o.split("=")[0] for o in hydra_record]):
        assert not {"resume", "ckpt_path", "hydra.run.dir"} & set(recorded), recorded
    assert "theory" in record  # a real resume keeps every block of the record


def test_a_run_that_ends_non_finite_is_diverged_whatever_the_guard_checked(tmp_path):
    proc = run_cli("optimizer.lr=3", "trainer.max_steps=200", "callbacks.divergence_guard.every_n_steps=0", *QUIET, cwd=tmp_path, expect=3)
    record = metrics(only_run(tmp_path))
    assert record["status"] == "diverged" and record["metrics"]["loss"] is None
    assert "non-finite" in one_line_error(proc)


def test_relative_paths_are_resolved_where_the_command_ran_so_resume_and_chdir_read_the_same_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("x,y\n" + "\n".join(f"{i},{2 * i + 1}" for i in range(20)) + "\n")
    common = ["task=linreg", "task.data.path=data/a.csv", "task.data.target=y", "trainer.max_steps=30", *QUIET]
    run_cli(*common, "hydra.job.chdir=true", cwd=tmp_path)
    run = only_run(tmp_path)
    assert f"task.data.path='{tmp_path / 'data' / 'a.csv'}'" in (run / ".hydra" / "overrides.yaml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli(f"resume={run}", "trainer.max_steps=60", cwd=elsewhere)
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == 60


def csv_rows(run) -> dict[int, dict[str, str]]:
    import csv

    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert len(steps) == len(set(steps)), "a step logged twice"
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}


def test_the_csv_logger_keeps_its_rows_up_to_the_checkpoint_and_drops_the_killed_stretch(tmp_path):
    import shutil

    common = ["logger=csv", "optimizer.lr=0.01", "callbacks.checkpoint.min_interval_s=0", *QUIET]
    run_cli(*common, "trainer.max_steps=50", cwd=tmp_path)
    run = only_run(tmp_path)
    at_50 = tmp_path / "at_50.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", at_50)
    run_cli(f"resume={run}", "trainer.max_steps=100", cwd=tmp_path)  # logs 50..90
    shutil.copy(at_50, run / "checkpoints" / "last.ckpt")  # as if killed at 100 after a checkpoint at 50
    run_cli(f"resume={run}", "trainer.max_steps=150", cwd=tmp_path)
    (tmp_path / "straight").mkdir()
    run_cli(*common, "trainer.max_steps=150", cwd=tmp_path / "straight")
    rows = csv_rows(run)
    assert sorted(rows) == [*range(0, 150, 10), 150]  # and the last step (where final/* stand)
    assert rows == csv_rows(only_run(tmp_path / "straight"))


def test_hparams_show_the_run_once_with_the_configuration_it_finished_with(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from conftest import tensorboard_events

    run_cli(*RUN, cwd=tmp_path)
    run = only_run(tmp_path)
    run_cli(f"resume={run}", "trainer.max_steps=300", cwd=tmp_path)
    events = tensorboard_events(run)
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["trainer.max_steps"].number_value == 300
    assert scalars(run)["final/loss"] == {300: pytest.approx(metrics(run)["metrics"]["loss"], rel=1e-5)}
    assert len(list(run.glob("events.out.tfevents.*.hparams"))) == 1


def test_a_resume_that_fails_before_its_first_step_leaves_the_run_byte_identical(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n" + "\n".join(f"{i},{2 * i + 1}" for i in range(20)) + "\n")
    run_cli("task=linreg", "task.data.path=a.csv", "task.data.target=y", "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    (tmp_path / "a.csv").unlink()  # the data moved away since
    before = folder_digest(run)
    line = one_line_error(run_cli(f"resume={run}", "trainer.max_steps=60", cwd=tmp_path, expect=2))
    assert f"{tmp_path / 'a.csv'}: no such file" in line and "changed nothing" in line
    assert folder_digest(run) == before


@pytest.mark.parametrize("off", ["callbacks=none", "~callbacks.checkpoint"])
def test_without_the_checkpoint_callback_no_checkpoint_is_written_and_resume_says_why(tmp_path, off):
    run_cli(*RUN, off, cwd=tmp_path)
    run = only_run(tmp_path)
    assert not list(run.rglob("*.ckpt"))  # not Lightning's default epoch=0-step=100.ckpt either
    before = folder_digest(run)
    line = one_line_error(run_cli(f"resume={run}", "trainer.max_steps=200", cwd=tmp_path, expect=2))
    assert "kept no checkpoints" in line and "callbacks.checkpoint" in line
    assert folder_digest(run) == before
