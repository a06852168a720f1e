"""hydra/launcher=population: a sweep trained as one vectorised run writes what the basic launcher's
sweep writes, job by job (folders, curves, results, checkpoints), to float rounding."""

from __future__ import annotations

import math
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUIET, metrics, run_cli, scalars

POPULATION = "hydra/launcher=population"


def sweep_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "outputs" / "multirun").glob("*/*")
    return folder


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[:2].isdigit())


def both(tmp_path: Path, *sweep: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The same sweep with the basic and the population launcher: their sweep folders, and the
    population run's process (for its console lines)."""
    folders = []
    for launcher in ("basic", "population"):
        cwd = tmp_path / launcher
        cwd.mkdir()
        proc = run_cli("-m", f"hydra/launcher={launcher}", *sweep, *QUIET, cwd=cwd)
        folders.append(sweep_folder(cwd))
    return folders[0], folders[1], proc


def files(job: Path) -> list[str]:
    """A job's files, each TensorBoard event file named `events` (their names carry time and host),
    an HPARAMS file `events.hparams`: as many of each as there are."""
    def name(path: Path) -> str:
        if path.name.startswith("events.out.tfevents"):
            return "events.hparams" if path.name.endswith(".hparams") else "events"
        return str(path.relative_to(job))

    return sorted(name(p) for p in job.rglob("*") if p.is_file())


def assert_close(a: float | None, b: float | None, rel: float, what: str) -> None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        assert a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b)), what
    else:
        assert a == pytest.approx(b, rel=rel, abs=rel * 1e-3), what


def assert_equivalent(sequential: Path, population: Path, rel: float) -> None:
    """Each job as the basic launcher left it: same folder, files, status, steps, final metrics,
    solution, every logged scalar at every step, and a checkpoint of the same shape."""
    assert [j.name for j in jobs(population)] == [j.name for j in jobs(sequential)]
    for alone, member in zip(jobs(sequential), jobs(population)):
        assert files(member) == files(alone), alone.name
        for saved in ("config.yaml", "overrides.yaml"):  # hydra.yaml differs in the launcher's name
            assert (member / ".hydra" / saved).read_text() == (alone / ".hydra" / saved).read_text(), (alone.name, saved)
        expected, got = metrics(alone), metrics(member)
        for key in ("status", "steps", "error", "task"):
            assert got[key] == expected[key], (alone.name, key)
        # a distance that subtracts the optimum (excess loss) loses digits: scaled by the loss
        scale = max(1.0, abs(expected["metrics"].get("loss") or 1.0))
        for key, value in expected["metrics"].items():
            assert_close(got["metrics"][key], value, rel * (1 if key == "loss" else scale), f"{alone.name} {key}")
        for key, value in (expected.get("theory") or {}).items():
            assert_close(got["theory"][key], value, rel, f"{alone.name} theory/{key}")
        if (alone / "solution.pt").exists():
            solution, reference = (torch.load(j / "solution.pt", weights_only=True) for j in (member, alone))
            assert solution.keys() == reference.keys()
            for name in reference:
                scale = float(reference[name].double().abs().nan_to_num(posinf=0).max()) if reference[name].numel() else 0.0
                assert torch.allclose(solution[name], reference[name], rtol=rel, atol=rel * scale, equal_nan=True), (alone.name, name)
        curves, reference_curves = scalars(member), scalars(alone)
        assert curves.keys() == reference_curves.keys(), alone.name
        loss_curve = reference_curves["train/loss"]
        for tag, points in reference_curves.items():
            if "log10_" in tag:  # a companion of a linear curve compared here; a value that rounds
                continue         # to ≤ 0 in one run and not the other has a point in one only
            assert curves[tag].keys() == points.keys(), (alone.name, tag)
            # TensorBoard keeps float32 (angles are computed well-conditioned: eigen.line_angle);
            # an excess loss (loss − optimum) keeps the loss's absolute rounding
            # final/<name> is its curve's last point, compared on the curve's scale: alone, an
            # angle of 7e-14 degrees (the rounding floor, where two correct runs part) was its own
            curve = reference_curves.get(tag.removeprefix("final/"), points)
            scale = max([abs(v) for v in curve.values() if math.isfinite(v)] or [1.0])
            tolerance = max(rel, 1e-6)
            for step, value in points.items():
                floor = tolerance * (abs(loss_curve.get(step, scale)) if "excess" in tag else scale)
                if "angle_deg" in tag:  # Kahan's angle is exact to rounding in absolute terms: two runs whose
                    floor = rel * 90.0  # vectors agree to rounding give ~1e-14° angles differing in every digit
                close = value == pytest.approx(curves[tag][step], rel=tolerance, abs=floor, nan_ok=True)
                assert close, f"{alone.name} {tag} at {step}: {curves[tag][step]} != {value}"
        if (alone / "checkpoints" / "last.ckpt").exists():
            mine, theirs = (torch.load(j / "checkpoints" / "last.ckpt", weights_only=False) for j in (member, alone))
            assert mine.keys() == theirs.keys(), alone.name
            assert mine["optimizer_states"][0]["param_groups"] == theirs["optimizer_states"][0]["param_groups"]
            assert [s.keys() for s in mine["optimizer_states"][0]["state"].values()] == [s.keys() for s in theirs["optimizer_states"][0]["state"].values()]
            assert nearly(mine["lr_schedulers"], theirs["lr_schedulers"], rel), alone.name
            assert mine["loops"] == theirs["loops"] and mine["global_step"] == theirs["global_step"]
            assert mine["callbacks"].keys() == theirs["callbacks"].keys()


def nearly(a, b, rel: float) -> bool:
    """Equal structures whose floats agree to `rel` (a plateau scheduler's best loss, say)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nearly(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(nearly(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=rel * 1e-3, nan_ok=True)
    return a == b


EXACT = ["trainer.precision=64-true", "trainer.max_steps=150", "callbacks.checkpoint.every_n_train_steps=50",
         "callbacks.checkpoint.min_interval_s=0"]


@pytest.mark.parametrize(
    "sweep",
    [
        ["task=inverse", "optimizer=momentum", "optimizer.lr=0.05,0.2,0.5", "seed=1,2"],
        ["task=linreg", "optimizer=adam", "optimizer.lr=0.01,0.1", "scheduler=step", "scheduler.gamma=0.5,0.9"],
        ["task=lowrank", "optimizer=rmsprop", "optimizer.lr=0.001,0.01", "optimizer.momentum=0,0.5", "scheduler=exponential"],
        ["task=quadratic", "optimizer=adamw", "optimizer.lr=0.01,0.1", "optimizer.weight_decay=0,0.1", "scheduler=cosine"],
        ["task=eigen", "optimizer=sgd", "optimizer.lr=0.01,0.1,0.5", "optimizer.nesterov=true", "optimizer.momentum=0.5",
         "trainer.gradient_clip_val=1.0"],
        ["task=mlp", "optimizer=adam", "optimizer.lr=0.001,0.01", "seed=1,2", "scheduler=plateau", "scheduler.patience=2"],
    ],
    ids=["inverse-momentum-seeds", "linreg-adam-step", "lowrank-rmsprop-exponential", "quadratic-adamw-cosine", "eigen-nesterov-clipped",
         "mlp-adam-plateau-seeds"],
)
def test_a_population_writes_what_the_sequential_sweep_writes(tmp_path, sweep):
    sequential, population, proc = both(tmp_path, *sweep, *EXACT)
    assert "population: jobs" in proc.stdout
    assert_equivalent(sequential, population, rel=1e-12)


@pytest.mark.parametrize("task,lrs", [("inverse", "0.05,0.2"), ("linreg", "0.01,0.05"), ("lowrank", "0.001,0.01"),
                                      ("quadratic", "0.01,0.05"), ("eigen", "0.01,0.05"), ("mlp", "0.001,0.01")])
def test_every_task_with_momentum_and_adam_with_and_without_a_scheduler(tmp_path, task, lrs):
    """Eight jobs, four populations of two: each task with SGD+momentum and Adam, with no
    scheduler and with StepLR (which halves the learning rate at step 50)."""
    sequential, population, proc = both(tmp_path, f"task={task}", "optimizer=momentum,adam", f"optimizer.lr={lrs}",
                                        "scheduler=none,step", "trainer.precision=64-true", "trainer.max_steps=60")
    assert proc.stdout.count("train together (2 members)") == 4
    assert_equivalent(sequential, population, rel=1e-12)


def test_jobs_of_equal_overrides_are_each_their_own_member_and_folder(tmp_path):
    """A value swept twice (optimizer.lr=1.5 at jobs 1 and 3): two jobs, two members, two folders, as
    the basic launcher makes them (the sweeper's check had composed one config that both took)."""
    sequential, population, proc = both(tmp_path, "optimizer.lr=0.05,0.3,0.09,0.3", "trainer.max_steps=30", "trainer.precision=64-true")
    assert "population: jobs 0-3 train together (4 members)" in proc.stdout
    assert [j.name for j in jobs(population)] == ["0" + str(n) + "_optimizer.lr=" + lr for n, lr in enumerate(("0.05", "0.3", "0.09", "0.3"))]
    assert_equivalent(sequential, population, rel=1e-12)
    assert metrics(jobs(population)[1])["metrics"] == metrics(jobs(population)[3])["metrics"]


def test_float32_members_end_within_1e_5_of_their_own_runs(tmp_path):
    lrs = ",".join(f"{lr:g}" for lr in (0.01, 0.05, 0.1, 0.2, 0.46, 0.9, 1.0, 1.5))
    sequential, population, _ = both(tmp_path, f"optimizer.lr={lrs}", "trainer.max_steps=200")
    assert_equivalent(sequential, population, rel=1e-5)
    statuses = [metrics(j)["status"] for j in jobs(population)]
    assert statuses == ["completed"] * 7 + ["diverged"]  # 1.0 sits on lr_critical (oscillates, no growth); 1.5 beyond


def test_a_diverging_member_stops_alone_and_leaves_the_others_untouched(tmp_path):
    with_it, without = tmp_path / "with", tmp_path / "without"
    for cwd, lrs in ((with_it, "0.1,2.0,0.46"), (without, "0.1,0.46")):
        cwd.mkdir()
        run_cli("-m", POPULATION, f"optimizer.lr={lrs}", "trainer.max_steps=100", "trainer.precision=64-true", *QUIET, cwd=cwd)
    kept = [j for j in jobs(sweep_folder(with_it)) if "2.0" not in j.name]
    (diverged,) = [j for j in jobs(sweep_folder(with_it)) if "2.0" in j.name]
    assert metrics(diverged)["status"] == "diverged" and metrics(diverged)["steps"] < 20
    assert "lr_critical" in metrics(diverged)["error"]
    for member, alone in zip(kept, jobs(sweep_folder(without))):
        assert metrics(member)["status"] == "completed"
        assert metrics(member)["metrics"] == metrics(alone)["metrics"]
        assert torch.equal(*(torch.load(j / "solution.pt", weights_only=True)["W"] for j in (member, alone)))


def test_incompatible_jobs_form_separate_populations_and_lbfgs_runs_alone(tmp_path):
    proc = run_cli("-m", POPULATION, "optimizer=sgd,adam,lbfgs", "optimizer.lr=0.05,0.1", "trainer.max_steps=20", *QUIET, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("population:")]
    assert lines == [
        "population: jobs 0, 1 train together (2 members)",
        "population: jobs 2, 3 train together (2 members)",
        "population: job 4 runs alone: optimizer LBFGS is not vectorised (SGD, Adam, AdamW and RMSprop are)",
        "population: job 5 runs alone: optimizer LBFGS is not vectorised (SGD, Adam, AdamW and RMSprop are)",
    ]
    assert [metrics(j)["status"] for j in jobs(sweep_folder(tmp_path))] == ["completed"] * 6
    assert (sweep_folder(tmp_path) / "summary.md").exists()


def test_optuna_trials_train_in_populations_of_n_jobs(tmp_path):
    proc = run_cli("hparams_search=inverse_lr", POPULATION, "hydra.sweeper.n_jobs=3", "hydra.sweeper.n_trials=6",
                   "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    assert "population: jobs 0-2 train together (3 members)" in proc.stdout
    assert "population: jobs 3-5 train together (3 members)" in proc.stdout
    import yaml

    sweep = sweep_folder(tmp_path)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses = [metrics(j)["metrics"]["loss"] if metrics(j)["status"] == "completed" else float("inf") for j in jobs(sweep)]
    assert len(losses) == 6 and results["best_value"] == pytest.approx(min(losses))


def test_ctrl_c_stops_every_member_and_one_resumes_alone_exactly(tmp_path):
    run = ["optimizer=momentum", "optimizer.lr=0.1,0.2", "trainer.max_steps=20000", "trainer.precision=64-true",
           "callbacks.checkpoint.every_n_train_steps=100", "callbacks.checkpoint.min_interval_s=0", *QUIET]
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    interrupted.mkdir(), straight.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "train", "-m", POPULATION, *run], cwd=interrupted,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(interrupted.glob("outputs/multirun/*/*/*/checkpoints/last.ckpt"))) == 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    members = jobs(sweep_folder(interrupted))
    for member in members:
        record = metrics(member)
        assert record["status"] == "stopped" and f"resume='{member}'" in record["error"]
    # the second member, resumed alone, ends where its own uninterrupted run ends
    second = members[1]
    run_cli(f"resume={second}", cwd=tmp_path)
    assert metrics(second)["status"] == "completed" and metrics(second)["steps"] == 20000
    run_cli("optimizer=momentum", "optimizer.lr=0.2", "trainer.max_steps=20000", "trainer.precision=64-true", *QUIET, cwd=straight)
    (alone,) = (straight / "outputs" / "runs").glob("*/*")
    resumed, expected = (torch.load(j / "solution.pt", weights_only=True)["W"] for j in (second, alone))
    assert torch.allclose(resumed, expected, rtol=1e-12, atol=1e-15)  # entries that converged to 0 sit in denormals
    assert metrics(second)["metrics"]["loss"] == pytest.approx(metrics(alone)["metrics"]["loss"], rel=1e-9, abs=1e-30)


# ---- the parts, without a process ----

def compose(*overrides: str, return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def test_a_derived_sweep_config_is_the_one_hydra_composes():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from descend.prechecks import config_dir
    from hydra_plugins.descend_population_launcher.population_launcher import derive_sweep_config, job_config, plain_signature

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", ["optimizer=adam", "trainer.max_steps=50"], run_mode=RunMode.MULTIRUN)
        # a sweep's constants (max_steps) are set in the template already; a key set twice is applied in order
        first = ["optimizer=adam", "optimizer.lr=0.1", "seed=1", "optimizer.betas=[0.9,0.99]", "trainer.max_steps=7"]
        second = ["optimizer=adam", "optimizer.lr=0.02", "seed=7", "optimizer.betas=[0.8,0.9]", "trainer.max_steps=7"]
        twice = (["seed=1", "seed=2", "optimizer.lr=0.1"], ["seed=5", "seed=2", "optimizer.lr=0.3"])
        parse = OverridesParser.create().parse_overrides
        assert plain_signature(master, parse(first)) == plain_signature(master, parse(second)) is not None
        assert plain_signature(master, parse(["optimizer=sgd,adam"])) is None and plain_signature(master, parse(["+foo=1"])) is None
        # a mapping is merged into the config: the template's entries would stay in the job's
        assert plain_signature(master, parse(["callbacks.checkpoint={every_n_train_steps:7}"])) is None
        template, composed = (loader.load_sweep_config(master, o) for o in (first, second))
        twice_template, twice_composed = (loader.load_sweep_config(master, o) for o in twice)
    derived = derive_sweep_config(pickle.dumps(template), parse(second), template_lines=tuple(first))
    assert OmegaConf.to_container(derived, resolve=False) == OmegaConf.to_container(composed, resolve=False)
    assert derived.hydra.job.override_dirname == "optimizer.betas=[0.8,0.9],optimizer.lr=0.02,optimizer=adam,seed=7,trainer.max_steps=7"
    # the job's config without Hydra's node, derived from its own template: what job_config copies out
    task = derive_sweep_config(pickle.dumps(job_config(template)), parse(second), choices=set(composed.hydra.runtime.choices),
                               template_lines=tuple(first))
    assert OmegaConf.to_container(task, resolve=False) == OmegaConf.to_container(job_config(composed), resolve=False)
    assert "hydra" not in task and OmegaConf.is_struct(task) == OmegaConf.is_struct(composed) and task.optimizer.lr == 0.02
    derived = derive_sweep_config(pickle.dumps(twice_template), parse(twice[1]), template_lines=tuple(twice[0]))
    assert OmegaConf.to_container(derived, resolve=False) == OmegaConf.to_container(twice_composed, resolve=False)
    assert derived.seed == 2


@pytest.mark.parametrize("second", [
    ["optimizer.lr=0.02", "task.matrix.cols=5"],                       # interpolations (${.rows}, ${task.sgd_lr}) set to numbers
    ["optimizer.lr=${task.matrix.rows}", "task.matrix.cols=${.rows}"],  # interpolations where the first job has numbers
    ["optimizer.lr=0.02", "task.matrix.cols=${oc.env:HOME}"],          # a resolver's interpolation
    ["trainer.default_root_dir=${hydra:runtime.choices.task}/x.y-z"],   # a Hydra value and a suffix (resolved_from_hydra)
    ["trainer.default_root_dir=${hydra:verbose}"],                      # a Hydra value that is no string (OmegaConf's)
    ["trainer.default_root_dir=${hydra:runtime.output_dir}${task.matrix.rows}"],  # more than a suffix (OmegaConf's)
    ["task.matrix.cols=${..steps_per_epoch}", "trainer.default_root_dir=${seed}"],  # references up and from the root (resolved_reference)
    ["trainer.default_root_dir=${task.matrix}"],                        # a reference to a mapping (OmegaConf's)
    ["trainer.max_steps=${task.matrix.cols}", "trainer.default_root_dir=${trainer.max_steps}"],  # to references (OmegaConf's)
])
def test_a_derived_job_resolves_as_omegaconf_resolves(second):
    """The launcher resolves a derived job's config only where its group's first job had
    interpolations and where its own overrides set values (resolve_at): the config OmegaConf.resolve
    makes of it, with ${hydra:runtime.output_dir} its own folder, with interpolations parsed once."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from hydra_plugins.descend_population_launcher.population_launcher import (
        interpolation_paths, interpolations_parsed_once, job_config, resolve_at)

    first = compose(return_hydra_config=True)
    paths = interpolation_paths(job_config(first))
    assert {("trainer", "default_root_dir"), ("callbacks", "checkpoint", "dirpath"), ("task", "matrix", "cols"), ("optimizer", "lr")} <= set(paths)
    composed = compose(*second, return_hydra_config=True)
    with read_write(composed.hydra), open_dict(composed.hydra):
        composed.hydra.runtime.output_dir = "/tmp/job-7"
    HydraConfig.instance().set_config(composed)
    expected, derived = job_config(composed), job_config(composed)
    OmegaConf.resolve(expected)
    with interpolations_parsed_once():
        resolve_at(derived, [*paths, *(tuple(o.split("=")[0].split(".")) for o in second)])
    assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(expected)
    assert "${" not in OmegaConf.to_yaml(derived) and derived.callbacks.checkpoint.dirpath == "/tmp/job-7/checkpoints"
    # a path the job does not hold (an override replaced a mapping): the whole config is resolved
    fallback = job_config(composed)
    resolve_at(fallback, [("task", "no_such_entry"), *paths])
    assert OmegaConf.to_yaml(fallback) == OmegaConf.to_yaml(expected)


def test_plain_references_and_hydra_folders_resolve_as_omegaconf_resolves_them():
    """resolve_at's own steps: a reference to a plain value (resolved_reference) and a Hydra
    value with a suffix (resolved_from_hydra) give OmegaConf's values; any other form is left to
    OmegaConf (False, the node untouched)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from hydra_plugins.descend_population_launcher.population_launcher import resolved_from_hydra, resolved_reference

    composed = compose(return_hydra_config=True)
    composed.hydra.runtime.output_dir = "/tmp/job-3"
    composed.hydra.job.num = 3
    HydraConfig.instance().set_config(composed)

    def config():
        return OmegaConf.create({"a": {"rows": 4, "cols": "${.rows}", "up": "${..b}", "abs": "${a.rows}", "map": "${.sub}",
                                       "sub": {"x": 1}, "chain": "${.cols}", "miss": "${.q}", "q": "???",
                                       "dir": "${hydra:runtime.output_dir}/checkpoints", "num": "${hydra:job.num}"}, "b": 2.5})

    expected, cfg = config(), config()
    OmegaConf.resolve(expected)
    a = cfg.a
    for key, direct in (("chain", False), ("cols", True), ("up", True), ("abs", True), ("map", False), ("miss", False)):
        assert resolved_reference(a._get_node(key), a) is direct, key
    assert (a.cols, a.up, a.abs) == (4, 2.5, 4)
    assert a._get_node("chain")._value() == "${.cols}"  # its target was an interpolation when asked
    assert resolved_from_hydra(a._get_node("dir")) and a.dir == "/tmp/job-3/checkpoints"
    assert not resolved_from_hydra(a._get_node("num"))  # not a string: OmegaConf's
    OmegaConf.resolve(cfg)  # what is left, by OmegaConf
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(expected)
    absent = OmegaConf.create({"a": "${.nowhere}", "b": "${c.d}", "c": 1})
    assert not resolved_reference(absent._get_node("a"), absent) and not resolved_reference(absent._get_node("b"), absent)


def test_interpolations_parsed_once_give_omegaconfs_values_and_leave_its_parser_as_it_was():
    import omegaconf.base
    from omegaconf import OmegaConf

    from hydra_plugins.descend_population_launcher.population_launcher import interpolations_parsed_once

    parse = omegaconf.base.parse
    cfg = OmegaConf.create({"a": 2, "b": "${a}", "c": "x${a}y${b}", "d": {"e": "${..a}", "f": "${oc.decode:'[1, ${a}]'}"}})
    expected = OmegaConf.to_container(cfg, resolve=True)
    with interpolations_parsed_once():
        with interpolations_parsed_once():  # re-entrant
            assert OmegaConf.to_container(cfg, resolve=True) == expected
        cfg.a = 3  # a tree kept for a text resolves with the values of the moment
        assert OmegaConf.to_container(cfg, resolve=True) == {"a": 3, "b": 3, "c": "x3y3", "d": {"e": 3, "f": [1, 3]}}
        assert omegaconf.base.parse.cache_info().hits > 0
    assert omegaconf.base.parse is parse


def test_plan_shares_the_verdict_of_jobs_alike_but_for_member_numbers():
    """plan(configs, alike) is plan(configs): a job alike an earlier one but for member settings
    (member_setting) takes its verdict and population key without walking its config."""
    from descend.population.grouping import member_setting, plan

    configs = [compose("optimizer.lr=0.1", "scheduler=step"), compose("optimizer.lr=0.2", "scheduler=step", "seed=5"),
               compose("optimizer.lr=0.3", "scheduler=step", "scheduler.gamma=0.5"), compose("optimizer=lbfgs"),
               compose("optimizer=lbfgs", "optimizer.lr=0.5"), compose("optimizer.lr=0.3", "scheduler=step", "trainer.max_steps=7")]
    assert member_setting("optimizer.lr") and member_setting("seed") and not member_setting("trainer.max_steps")
    assert member_setting("scheduler.gamma", configs[0], configs[2]) and not member_setting("scheduler.interval", configs[0])
    alike = [None, 0, 0, None, 3, None]
    assert plan(configs, alike) == plan(configs) == [([0, 1, 2], None), ([3], plan(configs)[1][1]), ([4], plan(configs)[2][1]),
                                                      ([5], None)]
    assert "LBFGS" in plan(configs, alike)[2][1]


def test_number_overrides_are_parsed_as_hydra_parses_them():
    """parse_overrides reads `key=number` without Hydra's ANTLR parser: the same Override (type,
    key, value and its type, input line) as Hydra's for every text its pattern takes; the rest,
    Hydra's parser reads (or refuses) itself."""
    import random

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.descend_population_launcher.population_launcher import NUMBER_OVERRIDE, parse_overrides

    rng = random.Random(21)
    values = ["0", "7", "-3", "+4", "10", "0.5", "-0.011765", "+1.0", "1e5", "1E-3", "2.5e+10", "-0.0", "1e400", "0e0",
              "123456789012345678901234567890", "01", "1.", ".5", "1_000", "1e", "inf", "nan", "0x10", "1.5.2", " 1", "1 ", "",
              "abc", "1,2", "[1]", "${a}", "true", "null"]
    values += [f"{rng.uniform(-1e3, 1e3):.{rng.randint(0, 12)}f}" for _ in range(100)]
    values += [repr(rng.lognormvariate(0, 30)) for _ in range(100)]
    lines = [f"{key}={value}" for key in ("seed", "optimizer.lr", "a_b.c1.D", "_x") for value in values]
    lines += ["x-y=1", "a.0=1", "+a=1", "++a=1", "~a=1", "~a", "a@b=1", "a/b=1", "$a=1", "a..b=1", "a=1,2"]
    hydra = OverridesParser.create()
    fast = 0
    for line in lines:
        try:
            expected = hydra.parse_overrides([line])
        except Exception as error:
            assert NUMBER_OVERRIDE.fullmatch(line) is None, line
            with pytest.raises(type(error)):
                parse_overrides([line])
            continue
        got = parse_overrides([line])
        assert repr(got) == repr(expected), line  # every field; repr tells 1 from 1.0 and -0.0 from 0.0
        fast += NUMBER_OVERRIDE.fullmatch(line) is not None
    assert fast > 700  # most of them took the short way
    sweep = ["optimizer=adam", "optimizer.lr=0.1", "optimizer.betas=[0.8,0.9]", "trainer.enable_progress_bar=false"]
    for _ in range(2):  # the second time, from its kept parses: each job its own Override objects
        got = parse_overrides(sweep)
        assert repr(got) == repr(hydra.parse_overrides(sweep))
    assert got[2] is not parse_overrides(sweep)[2]


def test_jobs_are_grouped_by_everything_but_per_member_numbers():
    from descend.population.grouping import plan, why_alone

    configs = [compose("optimizer.lr=0.1"), compose("optimizer.lr=0.2", "seed=5"), compose("optimizer=adam"),
               compose("optimizer=lbfgs"), compose("optimizer.lr=0.3", "trainer.max_steps=7"), compose("optimizer.lr=0.4"),
               compose("task=mlp", "task.model.dropout=0.1"), compose("trainer=ddp_cpu"), compose("trainer.precision=16-mixed")]
    assert plan(configs) == [([0, 1, 5], None), ([2], None), ([3], why_alone(configs[3])), ([4], None),
                             ([6], why_alone(configs[6])), ([7], why_alone(configs[7])), ([8], why_alone(configs[8]))]
    assert "LBFGS" in why_alone(configs[3]) and "dropout" in why_alone(configs[6])
    assert "data-parallel" in why_alone(configs[7]) and "16-mixed" in why_alone(configs[8])
    # switches the vectorised update rules do not follow: a maximising member would descend
    assert why_alone(compose("+optimizer.maximize=true")) == "optimizer.maximize=true is not vectorised"
    assert why_alone(compose("optimizer=adam", "+optimizer.fused=true")) == "optimizer.fused=true is not vectorised"
    assert why_alone(compose("+optimizer.maximize=false")) is None
    # the sharpness callback measures one run's Hessian: off (the default) it groups, on it runs alone
    assert why_alone(compose("callbacks.sharpness.every_n_steps=0")) is None
    assert why_alone(compose("callbacks.sharpness.every_n_steps=10")) == "callbacks.sharpness measures one run's Hessian: it runs alone"


def test_members_hold_one_copy_of_their_data_and_split_where_it_differs():
    from descend.build import build_task
    from descend.population.members import by_data, share_data

    class Built:  # what by_data reads of a member
        def __init__(self, *overrides):
            cfg = compose(*overrides)
            torch.manual_seed(cfg.seed)  # as Member.build seeds before building
            self.task = build_task(cfg)

    same = [Built("task=lowrank", f"optimizer.lr={lr}") for lr in (0.01, 0.02, 0.03)]
    share_data([m.task for m in same])
    assert all(m.task.matrix is same[0].task.matrix for m in same)  # one tensor, not three equal ones
    seeds = [Built("task=eigen", f"seed={seed}") for seed in (1, 1, 2)]  # eigen's start vector is drawn by the seed
    assert [len(group) for group in by_data(seeds)] == [2, 1]


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize(
    "kind,settings",
    [
        (torch.optim.SGD, [dict(lr=0.01, momentum=0.9), dict(lr=0.003), dict(lr=0.02, momentum=0.5, dampening=0.1, weight_decay=0.01)]),
        (torch.optim.SGD, [dict(lr=0.01, momentum=0.9, nesterov=True), dict(lr=0.03, momentum=0.5, nesterov=True)]),
        (torch.optim.Adam, [dict(lr=0.01, betas=(0.9, 0.999)), dict(lr=0.003, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)]),
        (torch.optim.Adam, [dict(lr=0.01, amsgrad=True), dict(lr=0.003, amsgrad=True)]),
        (torch.optim.AdamW, [dict(lr=0.01, weight_decay=0.01), dict(lr=0.003, weight_decay=0.1)]),
        (torch.optim.RMSprop, [dict(lr=0.01), dict(lr=0.003, momentum=0.9, alpha=0.9, weight_decay=0.01)]),
        (torch.optim.RMSprop, [dict(lr=0.01, centered=True), dict(lr=0.003, centered=True, momentum=0.5)]),
    ],
    ids=["sgd", "nesterov", "adam", "amsgrad", "adamw", "rmsprop", "rmsprop-centered"],
)
def test_the_vectorised_update_is_each_members_torch_optimiser(kind, settings, dtype, rel):
    """50 steps of a quartic: every member ends where its own torch optimiser ends, and its slice
    of the state, written into its own optimiser, is that optimiser's state."""
    from descend.population.optimizers import VectorisedOptimizer

    torch.manual_seed(0)
    start, target = torch.randn(len(settings), 4, 3, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    alone, holders = [], []
    for i, options in enumerate(settings):
        p = torch.nn.Parameter(start[i].clone())
        optimizer = kind([p], **options)
        for _ in range(50):
            optimizer.zero_grad()
            ((p - target) ** 4).sum().backward()
            optimizer.step()
        alone.append((p.detach(), optimizer.state_dict()))
        holders.append(kind([torch.nn.Parameter(start[i].clone())], **options))
    stacked = torch.nn.Parameter(start.clone())
    update = VectorisedOptimizer(holders, [stacked])
    for _ in range(50):
        (grad,) = torch.autograd.grad(((stacked - target) ** 4).sum(), [stacked])
        update.step([grad])
    for i, (expected, state) in enumerate(alone):
        # relative to the parameter's size: an entry passing near zero has no relative digits to keep
        assert torch.allclose(stacked.detach()[i], expected, rtol=rel, atol=rel * float(expected.abs().max()))
        mine = update.load_into(i).state_dict()
        assert mine["param_groups"] == state["param_groups"]
        assert mine["state"].keys() == state["state"].keys()
        for key, value in state["state"].get(0, {}).items():
            value = torch.as_tensor(value, dtype=dtype)
            scale = max(rel, 1e-6) * float(value.abs().max())
            assert torch.allclose(torch.as_tensor(mine["state"][0][key], dtype=dtype), value, rtol=max(rel, 1e-6), atol=scale), key


def test_hydras_target_policy_is_skipped_only_after_it_passed_a_target_and_its_result():
    """instantiate_alike calls a made partial's target directly (without Hydra's per-call target
    policy) only after one call through Hydra's partial succeeded with a result that is no
    callable; a failing first call, or a callable result, keeps every call going through Hydra."""
    from omegaconf import OmegaConf

    from descend.build import instantiate_alike
    from descend.errors import UserError

    def entry(made, key):
        return next(value for k, value in made.items() if k[1] == key)

    made: dict = {}
    for value in ("a", "b"):
        assert instantiate_alike(OmegaConf.create({"_target_": "builtins.dict", "name": value}), "plain", made) == {"name": value}
        assert entry(made, "plain")[2] is True
    for value in ("a", "b"):  # a callable result (a module): Hydra's policy checks every call
        assert callable(instantiate_alike(OmegaConf.create({"_target_": "torch.nn.Identity", "tag": value}), "module", made))
        assert entry(made, "module")[2] is False
    for day in (40, 2):  # the first call fails: not trusted, the next call is Hydra's
        node = OmegaConf.create({"_target_": "datetime.date", "year": 2026, "month": 12, "day": day})
        if day == 40:
            with pytest.raises(UserError, match="day is out of range"):
                instantiate_alike(node, "date", made)
        else:
            assert str(instantiate_alike(node, "date", made)) == "2026-12-02"
        assert entry(made, "date")[2] is (day == 2)


def test_members_loggers_and_checkpoints_made_alike_are_hydras_own():
    """build.instantiate_alike (a member's logger and checkpoint from the partial Hydra made for the
    first member, called with the member's own folder; its optimiser's factory, the first one's
    partial with its own lr) makes the objects instantiate makes: the same type and the same
    attributes, but for the checkpoint's clock at its making."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.descend_population_launcher.population_launcher import job_config
    from omegaconf import OmegaConf

    from descend.build import instantiate, instantiate_alike
    from descend.prechecks import config_dir

    made: dict = {}
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for number, lr in enumerate((0.1, 0.2, 0.46)):
            cfg = compose("train", [f"optimizer.lr={lr}"], return_hydra_config=True)
            cfg.hydra.runtime.output_dir = f"/tmp/descend-alike/{number}"
            HydraConfig.instance().set_config(cfg)
            job = job_config(cfg)
            OmegaConf.resolve(job)
            for key, node in (("logger.tensorboard", job.logger.tensorboard), ("callbacks.checkpoint", job.callbacks.checkpoint)):
                theirs, ours = instantiate(node, key), instantiate_alike(node, key, made)
                assert type(ours) is type(theirs)
                mine, expected = vars(ours), vars(theirs)
                assert mine.keys() == expected.keys()
                differ = [k for k in expected if repr(mine[k]) != repr(expected[k])]
                assert differ in ([], ["_last_saved_at"]), (key, differ)
            assert str(ours.dirpath).startswith(f"/tmp/descend-alike/{number}")
            # an optimiser's factory, itself a partial: Hydra's partial, keywords in its order
            for stand_in in ({}, {"lr": 1.0}, {"momentum": 0.5}):
                theirs, ours = instantiate(job.optimizer, "optimizer", **stand_in), instantiate_alike(job.optimizer, "optimizer", made, **stand_in)
                assert (ours.func, ours.args, list(ours.keywords.items())) == (theirs.func, theirs.args, list(theirs.keywords.items()))
                assert ours.keywords["lr"] == stand_in.get("lr", lr)
