"""hydra.launcher.pbt: population-based training inside a population (population/pbt.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import QUIET, metrics, one_line_error, run_cli, scalars
from test_population import jobs, sweep_folder

LRS = "optimizer.lr=0.01,0.02,0.05,0.1,0.2,0.3,0.4,0.46"
# momentum: the final W depends on every step; 64-true: compared bit for bit
SWEEP = ["-m", "hydra/launcher=population", "optimizer=momentum", "trainer.max_steps=300", "trainer.precision=64-true",
         "trainer.log_every_n_steps=1", LRS, *QUIET]
PBT = ["hydra.launcher.pbt.interval=100", "hydra.launcher.pbt.fraction=0.25"]
FACTORS = (0.8, 1.25)  # the default
LR = "lr-SGD"  # the learning rate's curve, as LearningRateMonitor names it


def run_sweep(cwd: Path, *extra: str) -> Path:
    cwd.mkdir()
    run_cli(*SWEEP, *extra, cwd=cwd)
    return sweep_folder(cwd)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """The same sweep with PBT twice (seed 1), with PBT at seed 2, and without PBT."""
    root = tmp_path_factory.mktemp("pbt")
    return {"a": run_sweep(root / "a", *PBT, "hydra.launcher.pbt.seed=1"), "b": run_sweep(root / "b", *PBT, "hydra.launcher.pbt.seed=1"),
            "other": run_sweep(root / "other", *PBT, "hydra.launcher.pbt.seed=2"), "plain": run_sweep(root / "plain")}


def lineages(sweep: Path) -> dict[str, list[dict]]:
    return {job.name: metrics(job).get("lineage", []) for job in jobs(sweep)}


def test_copies_and_perturbations_are_as_recorded(sweeps):
    sweep = sweeps["a"]
    by_number = {int(job.name[:2]): job for job in jobs(sweep)}
    curves = {job.name: scalars(job) for job in jobs(sweep)}
    copies = [(job, entry) for job in jobs(sweep) for entry in metrics(job).get("lineage", [])]
    assert {entry["step"] for _, entry in copies} == {100, 200}  # at every interval, not at the end
    for step in (100, 200):  # two of the eight (fraction 0.25) copy at each
        assert sum(entry["step"] == step for _, entry in copies) == 2
    for job, entry in copies:
        step, source = entry["step"], by_number[entry["copied"]]
        mine, theirs = curves[job.name], curves[source.name]
        assert entry["folder"] == source.name and entry["metric"] == "train/loss"
        # ranked by the loss of the step before: the copier's was among the worst, its source's among the best
        losses = sorted(curves[j.name]["train/loss"][step - 1] for j in jobs(sweep))
        assert mine["train/loss"][step - 1] >= losses[-2] and theirs["train/loss"][step - 1] <= losses[1]
        assert entry["value"] == pytest.approx(mine["train/loss"][step - 1], rel=1e-6)  # TensorBoard keeps float32
        assert entry["from_value"] == pytest.approx(theirs["train/loss"][step - 1], rel=1e-6)
        # the copy: at the copy step the copier's parameters are its source's (the same loss and gradient)
        assert mine["train/loss"][step] == theirs["train/loss"][step] and mine["train/grad_norm"][step] == theirs["train/grad_norm"][step]
        assert mine["train/loss"][step - 1] != theirs["train/loss"][step - 1]
        # the perturbation: its lr curve changes at the copy step to the source's lr × one of the factors
        lr = entry["values"]["lr"]
        assert list(entry["values"]) == ["lr"]  # the one key swept
        assert mine[LR][step] == pytest.approx(lr, rel=1e-6) and mine[LR][step] != mine[LR][step - 1]
        assert min(abs(lr / theirs[LR][step - 1] - f) for f in FACTORS) < 1e-6
        assert mine[LR][step + 1] == mine[LR][step]


def test_the_same_seed_gives_the_same_sweep_bit_for_bit_and_another_seed_another(sweeps):
    a, b, other = sweeps["a"], sweeps["b"], sweeps["other"]
    assert lineages(a) == lineages(b) and any(lineages(a).values())
    for mine, theirs in zip(jobs(a), jobs(b)):
        assert metrics(mine)["metrics"] == metrics(theirs)["metrics"], mine.name
        assert torch.equal(*(torch.load(j / "solution.pt", weights_only=True)["W"] for j in (mine, theirs)))
    assert lineages(other) != lineages(a)


def test_members_never_copied_are_bitwise_those_without_pbt_and_all_are_until_the_first_copy(sweeps):
    a, plain = sweeps["a"], sweeps["plain"]
    never = 0
    for mine, theirs in zip(jobs(a), jobs(plain)):
        ours, without = scalars(mine)["train/loss"], scalars(theirs)["train/loss"]
        assert [ours[s] for s in range(100)] == [without[s] for s in range(100)], mine.name
        if not metrics(mine).get("lineage"):
            never += 1
            assert ours == without and metrics(mine)["metrics"] == metrics(theirs)["metrics"], mine.name
            assert torch.equal(*(torch.load(j / "solution.pt", weights_only=True)["W"] for j in (mine, theirs)))
        else:
            assert "lineage" not in metrics(theirs)
    assert never >= 4  # at most two copy at each of the two rounds


def test_the_summary_says_each_jobs_copies_sources_and_final_lr_and_only_for_a_pbt_sweep(sweeps):
    sweep = sweeps["a"]
    text = (sweep / "summary.md").read_text()
    assert "## Population-based training" in text and "Population-based training" not in (sweeps["plain"] / "summary.md").read_text()
    table = text.split("## Population-based training")[1]
    rows = {cells[0]: cells[1:] for line in table.splitlines() if line.startswith("| 0")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert sorted(rows) == [job.name for job in jobs(sweep)]  # every job, copied or not
    for job in jobs(sweep):
        copies, sources, final = rows[job.name]
        lineage = metrics(job).get("lineage", [])
        assert int(copies) == len(lineage)
        assert sources == (", ".join(f"{e['folder']} ({e['step']})" for e in lineage) or "—")
        curve = scalars(job)[LR]
        assert float(final) == pytest.approx(curve[max(curve)], rel=1e-3)  # its lr curve's last point (4 digits shown)


def test_bounds_clip_the_perturbed_values(tmp_path):
    sweep = run_sweep(tmp_path / "bounded", *PBT, "hydra.launcher.pbt.factors=[10.0]", "hydra.launcher.pbt.bounds={lr:[0.001,0.5]}")
    values = [entry["values"]["lr"] for entries in lineages(sweep).values() for entry in entries]
    assert values and all(v <= 0.5 for v in values) and 0.5 in values  # ×10 of the best members' lr is above 0.5


@pytest.mark.parametrize(("setting", "culprit"), [
    (["hydra.launcher.pbt.fraction=0.6"], "hydra.launcher.pbt.fraction=0.6"),
    (["hydra.launcher.pbt.interval=0"], "hydra.launcher.pbt.interval=0"),
    (["hydra.launcher.pbt.keys=[momentum]"], "optimizer.momentum is not swept"),
    (["hydra.launcher.pruner.rule=halving"], "hydra.launcher.pbt and hydra.launcher.pruner are both set"),
])
def test_bad_pbt_settings_are_refused_in_one_line_before_any_job_folder(tmp_path, setting, culprit):
    interval = [] if any("interval" in s for s in setting) else ["hydra.launcher.pbt.interval=10"]
    proc = run_cli("-m", "hydra/launcher=population", "optimizer=momentum", "optimizer.lr=0.1,0.2", *interval, *setting, *QUIET,
                   cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    assert not list(tmp_path.glob("outputs/multirun/*/*/0*"))


def test_a_signal_stops_a_pbt_sweep_and_resume_continues_it_exactly(tmp_path):
    """SIGTERM at a random step after some copies: resumed, the members go on with their perturbed
    values and the generator where it was, and end bit for bit where the uninterrupted sweep ends."""
    import signal

    from test_sweep_resume import resume_three_members_to_the_straight_sweep, signal_mid_training

    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    stopped.mkdir(), straight.mkdir()
    argv = ["-m", "hydra/launcher=population", "optimizer=momentum", "optimizer.lr=0.01,0.02,0.03", "trainer.max_steps=30000",
            "trainer.log_every_n_steps=10", "hydra.launcher.pbt.interval=50", "hydra.launcher.pbt.fraction=0.34",
            "hydra.launcher.pbt.bounds={lr:[0.001,0.03]}", *QUIET]
    signal_mid_training(stopped, argv, signal.SIGTERM, 143, logged=4000)  # some copies made by then
    sweep = sweep_folder(stopped)
    steps = {metrics(job)["steps"] for job in jobs(sweep)}
    saved = [torch.load(job / "checkpoints" / "last.ckpt", weights_only=False) for job in jobs(sweep)]
    assert all("descend_pbt" in c for c in saved) and any(c["descend_pbt"]["lineage"] for c in saved)
    (step,) = steps
    assert 100 < step < 30000
    resume_three_members_to_the_straight_sweep(sweep, argv, tmp_path, straight)
    assert any(metrics(job).get("lineage") for job in jobs(sweep))


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_signal_at_a_rounds_step_makes_that_round_once_and_the_resumed_sweep_ends_as_the_uninterrupted_one(sweeps, tmp_path, when):
    """SIGTERM at step 100, a round's: during its last step (the round is made at the stop) or just
    after its batch (the next group stops before its first step: no second round there)."""
    from test_pruning import outcome, signal_at_step

    sweep = signal_at_step(tmp_path / "stopped", [*SWEEP, *PBT, "hydra.launcher.pbt.seed=1"], 100, when)
    assert {e["step"] for entries in lineages(sweep).values() for e in entries} == {100}
    assert lineages(sweep) == {job: [e for e in entries if e["step"] == 100] for job, entries in lineages(sweeps["a"]).items()}
    run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    for job, theirs in zip(jobs(sweep), jobs(sweeps["a"])):
        assert outcome(job) == outcome(theirs), job.name


def test_the_bottom_share_copies_the_top_share_and_values_stay_in_bounds():
    from descend.population import pbt

    order = [3, 1, 0, 2, 4, 5, 6, 7]  # positions, best first
    assert pbt.pairs(order, 0.25, [1, 0]) == [(6, 1), (7, 3)]  # ⌊8·0.25⌋ = 2 copy from the best 2
    assert pbt.pairs(order, 0.1, [0]) == [(7, 3)]  # at least one
    assert pbt.pairs([0], 0.5, [0]) == []  # alone: nobody to copy
    assert pbt.perturbed(0.4, 1.25, (0.0, 0.45)) == 0.45 and pbt.perturbed(0.4, 0.8, None) == 0.4 * 0.8
