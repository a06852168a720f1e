"""hydra.launcher.pruner: members stopped early inside a population (population/pruning.py)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli, scalars
from test_population import files, jobs, sweep_folder

# in this order the two members left at rung 120 are jobs 1 and 5: a sweep stopped there resumes them as one
# population again (resume_sweep.ResumingLauncher), not as stretches of consecutive jobs, each alone and unpruned
LRS = "optimizer.lr=0.01,0.1,0.02,0.46,0.05,0.2,0.4,0.3"
# momentum: the final W depends on every step; 64-true: compared bit for bit
SWEEP = ["-m", "hydra/launcher=population", "optimizer=momentum", "trainer.max_steps=400", "trainer.precision=64-true",
         "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=100", *QUIET]
HALVING = ["hydra.launcher.pruner.rule=halving", "hydra.launcher.pruner.min_steps=60", "hydra.launcher.pruner.eta=2"]
# rungs 60, 120, 240: inside epochs (100 steps each; a resume at an epoch's end is issue 26's, see the note)


def run_sweep(cwd: Path, *extra: str) -> Path:
    cwd.mkdir()
    run_cli(*SWEEP, LRS, *extra, cwd=cwd)
    return sweep_folder(cwd)


@pytest.fixture(scope="module")
def halving(tmp_path_factory) -> tuple[Path, Path]:
    """The same sweep with successive halving and without a pruner: their sweep folders."""
    root = tmp_path_factory.mktemp("halving")
    return run_sweep(root / "pruned", *HALVING), run_sweep(root / "full")


def test_halving_keeps_exactly_the_members_its_rule_names_at_each_rung(halving):
    pruned, _ = halving
    still = jobs(pruned)
    for rung in (60, 120, 240):  # rungs r, rη, rη²
        # each member's train/loss at the last step before the rung, from its own TensorBoard run
        values = {job: scalars(job)["train/loss"][rung - 1] for job in still}
        ranked = sorted(still, key=lambda job: (values[job], job.name))  # folder names sort in job order
        keep = ranked[: len(still) // 2]
        for job in still:
            record = metrics(job)
            if job in keep:
                assert record["status"] == "completed" or record["pruned"]["step"] > rung, job.name
            else:
                assert record["status"] == "pruned" and record["steps"] == rung and record["pruned"]["step"] == rung, job.name
                assert record["pruned"]["value"] == pytest.approx(values[job], rel=1e-6)  # TensorBoard keeps float32
        still = keep
    assert [metrics(j)["status"] for j in jobs(pruned)].count("completed") == 1


def test_members_that_continue_end_bit_for_bit_where_they_end_unpruned(halving):
    pruned, full = halving
    for mine, theirs in zip(jobs(pruned), jobs(full)):
        if metrics(mine)["status"] != "completed":
            continue
        assert metrics(mine)["metrics"] == metrics(theirs)["metrics"], mine.name
        a, b = (torch.load(j / "solution.pt", weights_only=True)["W"] for j in (mine, theirs))
        assert torch.equal(a, b), mine.name
        assert scalars(mine)["train/loss"] == scalars(theirs)["train/loss"], mine.name


def test_a_pruned_member_leaves_a_runs_files_at_its_step_and_resumes_alone_exactly(halving, tmp_path):
    pruned, full = halving
    first = jobs(pruned)[0]
    record = metrics(first)
    assert record["status"] == "pruned" and record["steps"] == 60 and record["error"] is None
    assert record["pruned"]["continue"] == f"python -m train resume='{first}'"  # the command, as it runs below
    assert files(first) == files(jobs(full)[0])  # the same files as a member that trained to the end
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 60
    curves = scalars(first)
    assert max(curves["train/loss"]) == 60 and list(curves["final/loss"]) == [60]
    # its final state is step 60's: the unpruned member's curve there (the loss logged at step 60)
    assert record["metrics"]["loss"] == pytest.approx(scalars(jobs(full)[0])["train/loss"][60], rel=1e-6)
    assert "pruned" in (pruned / "summary.md").read_text()

    pruned_after = record["wall_time_s"]
    run_cli(f"resume={first}", cwd=tmp_path)  # alone, to the sweep's max_steps
    assert metrics(first)["status"] == "completed" and metrics(first)["steps"] == 400
    assert metrics(first)["wall_time_s"] > pruned_after  # both sessions' time: the population's until the prune, then its own
    assert sorted(scalars(first)["train/loss"]) == list(range(401))  # one curve: every step once
    # exactly as the same job run alone to step 60 and resumed to 400: the member's checkpoint is that run's
    alone = tmp_path / "alone"
    alone.mkdir()
    run = ["optimizer=momentum", "optimizer.lr=0.01", "trainer.precision=64-true", "trainer.log_every_n_steps=1", *QUIET]
    run_cli(*run, "trainer.max_steps=60", cwd=alone)
    run_cli(f"resume={only_run(alone)}", "trainer.max_steps=400", cwd=tmp_path)
    resumed, expected = (torch.load(j / "solution.pt", weights_only=True)["W"] for j in (first, only_run(alone)))
    assert torch.equal(resumed, expected)
    assert metrics(first)["metrics"] == metrics(only_run(alone))["metrics"]


# `python -m train` with SIGTERM sent to itself at an exact step, through descend's own handler:
# "during" while step STEP-1 is computed (its group ends at STEP, a group end, with the flag set),
# "after" once the batch ending at STEP has ended (the next group stops before its first step)
SIGNAL_AT_STEP = """
import os, runpy, signal, sys
from descend.population.module import Population
step, when = int(sys.argv.pop(1)), sys.argv.pop(1)
hook = "member_losses" if when == "during" else "on_train_batch_end"
original = getattr(Population, hook)
def hooked(self, *args):
    if when == "during" and self.global_step == step - 1:
        os.kill(os.getpid(), signal.SIGTERM)
    result = original(self, *args)
    if when == "after" and self.global_step == step and self.trainer.global_step == step:
        os.kill(os.getpid(), signal.SIGTERM)
    return result
setattr(Population, hook, hooked)
runpy.run_module("train", run_name="__main__", alter_sys=True)
"""


def signal_at_step(cwd: Path, argv: list[str], step: int, when: str) -> Path:
    """Run the sweep `argv` in `cwd`, stopped by SIGTERM at `step` (see SIGNAL_AT_STEP); its sweep folder."""
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP, str(step), when, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 143 and f"members stopped at step {step}, each with its checkpoint there" in proc.stdout, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return sweep_folder(cwd)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The halving sweep run straight, left as it ended (`halving`'s first job is resumed by a test)."""
    return run_sweep(tmp_path_factory.mktemp("uninterrupted") / "sweep", *HALVING)


def outcome(job: Path) -> dict:
    """What a job ended with: status, steps, final numbers, pruning (less its folder's resume line), lineage."""
    record = metrics(job)
    pruned = {k: v for k, v in (record.get("pruned") or {}).items() if k != "continue"}
    return {"status": record["status"], "steps": record["steps"], "metrics": record["metrics"], "pruned": pruned,
            "lineage": record.get("lineage"), "W": torch.load(job / "solution.pt", weights_only=True)["W"].tolist()}


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_signal_at_a_rung_prunes_there_and_the_resumed_sweep_ends_as_the_uninterrupted_one(uninterrupted, tmp_path, when):
    """SIGTERM at rung 120: the rule acts at 120 (during its last step) or has acted there (after its
    batch), once; the pruned are recorded pruned at 120, the rest stopped at 120 with their checkpoints
    there, and the resumed sweep ends bit for bit as the uninterrupted one."""
    straight = uninterrupted
    sweep = signal_at_step(tmp_path / "stopped", [*SWEEP, LRS, *HALVING], 120, when)
    at_rung = {job.name for job in jobs(straight) if metrics(job)["status"] == "pruned" and metrics(job)["steps"] == 120}
    assert at_rung  # the rung prunes someone
    for job, theirs in zip(jobs(sweep), jobs(straight)):
        record = metrics(job)
        if job.name in at_rung:
            assert outcome(job) == outcome(theirs), job.name  # pruned at 120 by the ranks of step 119's losses
        elif record["status"] != "pruned":  # the rest: stopped at the rung, with their checkpoints there
            assert record["status"] == "stopped" and record["steps"] == 120, job.name
            assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 120
    run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    for job, theirs in zip(jobs(sweep), jobs(straight)):
        assert outcome(job) == outcome(theirs), job.name
        if metrics(job)["status"] == "completed":
            assert scalars(job)["train/loss"] == scalars(theirs)["train/loss"], job.name


def test_the_median_rule_stops_the_members_worse_than_the_median_of_the_others(tmp_path):
    sweep = run_sweep(tmp_path / "median", "hydra.launcher.pruner.rule=median", "hydra.launcher.pruner.min_steps=50",
                      "hydra.launcher.pruner.every_n_steps=50")
    still = jobs(sweep)
    for step in range(50, 400, 50):
        values = {job: scalars(job)["train/loss"][step - 1] for job in still}
        worse = {job for job in still if len(still) > 1 and values[job] > statistics.median([v for j, v in values.items() if j != job])}
        for job in still:
            assert (metrics(job)["status"] == "pruned" and metrics(job)["steps"] == step) == (job in worse), (job.name, step)
        still = [job for job in still if job not in worse]
    assert still and all(metrics(j)["status"] == "completed" for j in still)


def test_the_rules_rank_ties_by_job_number_and_non_finite_values_last():
    from descend.population.pruning import halving_pruned, halving_rung, median_pruned

    assert [s for s in range(1, 1000) if halving_rung(s, 100, 3)] == [100, 300, 900]
    assert halving_pruned([1.0, 0.5, 0.5, float("nan")], [0, 1, 2, 3], eta=2) == [0, 3]
    assert halving_pruned([0.5, 0.5, 0.5], [4, 2, 9], eta=2) == [0, 2]  # keeps job 2: the lowest number of the tie
    assert halving_pruned([0.3], [0], eta=2) == []
    assert median_pruned([1.0, 2.0, 3.0, float("inf")], [0, 1, 2, 3]) == [2, 3]
    assert median_pruned([1.0], [0]) == []


def test_a_bad_pruner_setting_is_refused_in_one_line_before_any_job_folder(tmp_path):
    proc = run_cli("-m", "hydra/launcher=population", "optimizer.lr=0.1,0.2", "hydra.launcher.pruner.rule=hyperband", *QUIET,
                   cwd=tmp_path, expect=2)
    assert "hydra.launcher.pruner.rule=hyperband is not a pruner" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/multirun/*/*/0*"))


def test_a_val_metric_of_a_task_that_does_not_validate_is_refused_before_any_job_folder(tmp_path):
    proc = run_cli("-m", "hydra/launcher=population", "task=inverse", "optimizer.lr=0.1,0.2", "hydra.launcher.pruner.rule=median",
                   "hydra.launcher.pruner.metric=val/mse", *QUIET, cwd=tmp_path, expect=2)
    assert "hydra.launcher.pruner.metric=val/mse: task inverse does not validate; use train/loss" in proc.stderr
    assert not list(tmp_path.glob("outputs/multirun/*/*/0*"))


def test_a_rule_whose_first_step_is_the_runs_end_says_it_prunes_nobody(tmp_path):
    proc = run_cli("-m", "hydra/launcher=population", "optimizer.lr=0.1,0.2,0.3", "hydra.launcher.pruner.rule=median",
                   "hydra.launcher.pruner.min_steps=26", *QUIET, cwd=tmp_path)  # every_n_steps 100: first check at 100, the end
    assert ("warning: hydra.launcher.pruner: its first step is 100, not before the run's last step (trainer.max_steps=100), "
            "so it acts on nobody; lower hydra.launcher.pruner.min_steps or every_n_steps") in proc.stdout
    assert "3 completed" in proc.stdout


def test_the_summary_plot_draws_pruned_members_as_pruned_and_only_plain_sgds_limits():
    """A pruned member is a result at its rung, not a failure; a momentum sweep's vertical lines are
    not plain SGD's lr_critical and lr_optimal."""
    from descend.multirun import summary_figure

    theory = {"lr_critical": 1.0, "lr_optimal": 0.94, "condition_number": 16.0, "lr_limit": 1.9, "heavy_ball_rate": 0.6}
    rows = [{"task": "inverse", "status": status, "loss": loss, "overrides": f"optimizer.lr={lr}", "theory": theory, "job": i}
            for i, (lr, status, loss) in enumerate([(0.1, "completed", 0.01), (0.2, "pruned", 0.5), (0.3, "failed", None)])]
    labels = [line.get_label() for axes in summary_figure(rows).axes for line in axes.get_lines()]
    assert "pruned (its loss when pruned)" in labels and "diverged / failed" in labels
    assert not any(label.startswith(("lr_optimal", "lr_critical")) for label in labels)
    plain = {**theory, "lr_limit": 1.0}
    del plain["heavy_ball_rate"]
    labels = [line.get_label() for axes in summary_figure([{**r, "theory": plain} for r in rows]).axes for line in axes.get_lines()]
    assert any(label.startswith("lr_critical") for label in labels)


def test_the_summary_plots_loss_axis_spans_the_pruned_members_values_too():
    """Completed members close together and pruned ones decades above (a halving sweep): a log
    axis, so that the completed ones do not all sit on 0; without the pruned ones, a linear one."""
    from descend.multirun import summary_figure

    def rows(pruned: bool) -> list[dict]:
        done = [("completed", 1.0e-10 * (1 + i / 10)) for i in range(4)]
        stopped = [("pruned", 1.5e-2 / (i + 1)) for i in range(4)] if pruned else []
        return [{"task": "inverse", "status": status, "loss": loss, "overrides": f"optimizer.lr={0.1 + i / 10:.1f}", "theory": {}, "job": i}
                for i, (status, loss) in enumerate(done + stopped)]

    assert [axes.get_yscale() for axes in summary_figure(rows(pruned=True)).axes] == ["log"]
    assert [axes.get_yscale() for axes in summary_figure(rows(pruned=False)).axes] == ["linear"]
