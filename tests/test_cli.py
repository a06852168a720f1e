"""Real runs of `python -m train`, asserting on the files a user would look at."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import QUIET, metrics, one_line_error, only_run, run_cli, run_dirs, scalars, tensorboard_events

SEED_LOSSES = {0: 1.6650, 20: 5.439e-3, 40: 5.072e-4, 60: 4.734e-5, 80: 4.418e-6}  # seed notebook 000


@pytest.fixture(scope="module")
def seed_inverse(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("seed_inverse")
    proc = run_cli("experiment=seed_inverse", *QUIET, cwd=cwd)
    return only_run(cwd), proc


def test_seed_inverse_reproduces_notebook_000(seed_inverse):
    run, _ = seed_inverse
    loss = scalars(run)["train/loss"]
    for step, expected in SEED_LOSSES.items():
        assert loss[step] == pytest.approx(expected, rel=1e-3), step
    record = metrics(run)
    assert record["status"] == "completed" and record["steps"] == 100
    assert record["metrics"]["ref/rel_error"] < 0.01


def test_run_folder_holds_the_contract(seed_inverse):
    run, proc = seed_inverse
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", "solution.pt", "solution.npz", "checkpoints/last.ckpt", "train.log"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))  # straight in the run folder: TensorBoard names the run by it
    assert not (run / "hparams.yaml").exists()  # the config is in .hydra/
    # the solution loads with plain torch and plain numpy and is close to inv(M)
    inverse = np.diag([1, 1 / 2, 1 / 3, 1 / 4])
    w_torch = torch.load(run / "solution.pt", weights_only=True)["W"].numpy()
    w_numpy = np.load(run / "solution.npz")["W"]
    np.testing.assert_allclose(w_torch, w_numpy, rtol=1e-6)
    assert np.linalg.norm(w_numpy - inverse) / np.linalg.norm(inverse) < 0.01
    # the console summary says where to look
    assert "tensorboard --logdir" in proc.stdout and str(run.name) in proc.stdout


def test_tensorboard_has_curves_images_config_and_real_hparams(seed_inverse):
    run, _ = seed_inverse
    series = scalars(run)
    for tag in ("train/loss", "train/grad_norm", "ref/rel_error", "ref/excess_loss", "lr-SGD"):
        assert len(series[tag]) >= 90, tag
    assert series["ref/rel_error"][99] < series["ref/rel_error"][0]
    events = tensorboard_events(run)
    assert [e.step for e in events.Images("images/W·M")][:5] == [0, 20, 40, 60, 80]
    assert "config/text_summary" in events.Tags()["tensors"]
    # HPARAMS: the run's hyper-parameters with its final metrics, not the placeholder hp_metric
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["optimizer.lr"].number_value == pytest.approx(0.4605170)
    assert session.hparams["task.matrix.source"].string_value == "diag"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {m.name.tag for m in experiment.metric_infos}
    assert "final/loss" in names and "hp_metric" not in names
    # the final metrics sit at the run's last step, where the curves they summarise end
    last = metrics(run)["steps"]
    assert series["final/loss"] == {last: pytest.approx(metrics(run)["metrics"]["loss"], rel=1e-5)}
    assert series["final/diverged"] == {last: 0.0}
    # and the curves end there too: their last point is the final metrics'
    for tag, final in (("train/loss", "loss"), ("ref/rel_error", "ref/rel_error"), ("ref/excess_loss", "ref/excess_loss")):
        assert max(series[tag]) == last and series[tag][last] == pytest.approx(metrics(run)["metrics"][final], rel=1e-6), tag


def test_decaying_curves_have_log10_companions_and_a_custom_scalars_page(seed_inverse):
    import math

    from tensorboard.plugins.custom_scalar import layout_pb2

    run, _ = seed_inverse
    series = scalars(run)
    for tag, companion in (("train/loss", "train/log10_loss"), ("ref/rel_error", "ref/log10_rel_error"),
                           ("ref/excess_loss", "ref/log10_excess_loss"), ("train/grad_norm", "train/log10_grad_norm")):
        linear, logs = series[tag], series[companion]
        positive = {step: value for step, value in linear.items() if value > 0}
        assert logs.keys() == positive.keys(), tag  # the same logging steps
        assert all(logs[step] == pytest.approx(math.log10(value), abs=1e-6) for step, value in positive.items()), tag
    assert series["train/log10_loss"][80] == pytest.approx(math.log10(SEED_LOSSES[80]), abs=1e-3)
    # the custom-scalars page: loss, distance to the optimum and learning rate, by tag pattern
    events = tensorboard_events(run)
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    patterns = [chart.multiline.tag for chart in category.chart]
    assert patterns == [["^descent/train/log10_loss$"], ["^distance/ref/log10_rel_error$"], ["^distance/ref/log10_excess_loss$"],
                        ["^distance/theory/log10_excess_loss$"], ["^lr-"]]


def test_seed_linreg_reproduces_notebook_003(tmp_path):
    run_cli("experiment=seed_linreg", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    record = metrics(run)
    assert record["metrics"]["prediction@5"] == pytest.approx(10.0, abs=5e-4)
    w = torch.load(run / "solution.pt", weights_only=True)["w"]
    assert float(w) == pytest.approx(2.0, abs=1e-4)
    assert scalars(run)["train/loss"][0] == pytest.approx(44.0)  # the seed's epoch 1


@pytest.mark.parametrize("task", ["inverse", "linreg"])
def test_every_optimizer_reduces_the_loss(tmp_path, task):
    extra = ["task.data.source=linear", "task.data.features=3", "task.data.noise=0.1"] if task == "linreg" else []
    run_cli("-m", f"task={task}", "optimizer=sgd,adam,adamw,rmsprop,lbfgs", "trainer.max_steps=100",
            "trainer.log_every_n_steps=1", *extra, *QUIET, cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert len(jobs) == 5
    for job in jobs:
        record, loss = metrics(job), scalars(job)["train/loss"]
        assert record["status"] == "completed", job.name
        assert record["metrics"]["loss"] < 0.5 * loss[0], job.name
        if "lbfgs" in job.name:  # quasi-Newton: a full-batch problem converges in a handful of steps
            assert record["metrics"]["ref/rel_error"] < 1e-3, record


def test_every_scheduler_changes_the_learning_rate(tmp_path):
    # plateau: the seed data is fitted to float32 precision within ~60 steps, then the loss stalls
    run_cli("-m", "task=linreg", "task.bias=false", "scheduler=step,exponential,cosine,plateau", "trainer.max_steps=120",
            "trainer.log_every_n_steps=1", *QUIET, cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert len(jobs) == 4
    for job in jobs:
        lr = scalars(job)["lr-SGD"]
        assert metrics(job)["status"] == "completed"
        assert lr[max(lr)] < lr[0], job.name


def test_double_precision_with_lbfgs_reaches_the_closed_form(tmp_path):
    run_cli("task.matrix.source=random", "task.matrix.rows=6", "optimizer=lbfgs", "trainer.precision=64-true",
            "trainer.max_steps=15", *QUIET, cwd=tmp_path)
    record = metrics(only_run(tmp_path))
    assert record["metrics"]["ref/rel_error"] < 1e-9, record


def test_lowrank_from_a_picture_reaches_the_svd_optimum(tmp_path):
    from PIL import Image

    y, x = np.mgrid[0:24, 0:32]
    picture = (127 + 60 * np.sin(x / 5) + 60 * np.cos(y / 4)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "picture.png")
    run_cli("task=lowrank", "task.rank=3", f"task.matrix.path={tmp_path / 'picture.png'}", "optimizer=lbfgs",
            "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    saved = torch.load(run / "solution.pt", weights_only=True)
    a = torch.from_numpy(picture / 255.0)
    u, s, vh = torch.linalg.svd(a)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    assert saved["U"].shape == (24, 3) and saved["V"].shape == (32, 3)
    torch.testing.assert_close(saved["UVt"], (saved["U"] @ saved["V"].T))
    assert float(torch.linalg.norm(saved["UVt"].double() - best) / torch.linalg.norm(best)) < 1e-3
    assert metrics(run)["metrics"]["ref/excess_loss"] < 1e-2 * float((s[3:] ** 2).sum())
    assert tensorboard_events(run).Tags()["images"] == ["images/A | U·Vᵀ"]


def test_mlp_beats_a_constant_predictor_on_teacher_data(tmp_path):
    run_cli("task=mlp", "task.data.source=teacher", "task.data.rows=800", "task.data.noise=0.1", "optimizer=adam",
            "optimizer.lr=0.003", "trainer.max_steps=-1", "trainer.max_epochs=30", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    m = metrics(run)["metrics"]
    assert m["test/mse"] < 0.2 * m["test/baseline_mse"], m
    assert m["test/r2"] > 0.8 and "val/r2" in m and m["test/noise_floor"] == pytest.approx(0.01)
    saved = torch.load(run / "solution.pt", weights_only=True)
    assert saved["test_prediction"].shape == saved["test_target"].shape == (80,)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    net.load_state_dict({k.removeprefix("net."): v for k, v in saved.items() if k.startswith("net.")})
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_csv_data_for_linreg_and_mlp(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + 0.01 * rng.normal(size=300)
    rows = "\n".join(f"row{i},{a:.6f},{b:.6f},{t:.6f}" for i, (a, b, t) in enumerate(zip(x[:, 0], x[:, 1], y)))
    (tmp_path / "data.csv").write_text("id,a,b,price\n" + rows + "\n")
    common = [f"task.data.path={tmp_path / 'data.csv'}", "task.data.target=price", "optimizer=lbfgs", "trainer.max_steps=20", *QUIET]
    run_cli("task=linreg", *common, cwd=tmp_path)
    linreg = torch.load(only_run(tmp_path) / "solution.pt", weights_only=True)
    torch.testing.assert_close(linreg["w"], torch.tensor([3.0, -2.0]), atol=0.01, rtol=0)
    run_cli("task=mlp", *common, cwd=tmp_path)
    mlp = [run for run in run_dirs(tmp_path) if run.name.endswith("mlp")][0]
    assert metrics(mlp)["status"] == "completed" and metrics(mlp)["metrics"]["test/r2"] > 0.9


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["task=nope"], "task=nope is unknown; choose one of: eigen, inverse, linreg, lowrank, mlp, quadratic"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["task.matrix.path=missing.npy"], "/missing.npy: no such file"),  # resolved against the folder the command ran in
        (["optimizer.lrr=3"], "optimizer.lrr=3: optimizer.lrr is not a key of this config; did you mean optimizer.lr?"),
        (["task=lowrank", "task.rnak=3"], "task.rnak=3: task.rnak is not a key of this config; did you mean task.rank?"),
        (["task.matrix.values=[1,2"], "task.matrix.values=[1,2: cannot parse this override"),
        (["+optimizer.foo=1"], "optimizer: 'foo' is not an option here"),
        (["optimizer.momentum=-1"], "optimizer: Invalid momentum value: -1"),
        (["trainer.max_steps=-1"], "trainer.max_steps=-1 with trainer.max_epochs=-1 trains until killed; set trainer.max_epochs=N"),
        (["task=linreg", "task.data.path=holes.csv", "task.data.target=y"], "1 of 2 rows have an empty, non-numeric (NA) or infinite value: x on line 3"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, overrides, culprit):
    (tmp_path / "holes.csv").write_text("x,y\n1,2\nNA,4\n")
    proc = run_cli(*overrides, *QUIET, cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    for run in run_dirs(tmp_path):  # the failure is on record too
        assert metrics(run)["status"] == "failed" and culprit.split(":")[0] in metrics(run)["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_without_a_gpu_is_a_clear_error(tmp_path):
    proc = run_cli("trainer.accelerator=gpu", *QUIET, cwd=tmp_path, expect=2)
    assert "trainer.accelerator=cpu" in one_line_error(proc)


def test_diverging_run_stops_early_and_says_why(tmp_path):
    proc = run_cli("optimizer.lr=2.0", *QUIET, cwd=tmp_path, expect=3)
    line = one_line_error(proc)
    assert "diverged at step" in line and "optimizer.lr=2" in line
    record = metrics(only_run(tmp_path))
    assert record["status"] == "diverged" and record["steps"] < 100 and "diverged" in record["error"]


def test_last_checkpoint_holds_the_final_step(tmp_path):
    # 73 is no multiple of the checkpoint interval (50): Lightning alone would leave step 50
    run_cli("trainer.max_steps=73", *QUIET, cwd=tmp_path)
    checkpoint = torch.load(only_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 73


def test_two_runs_started_together_get_two_folders(tmp_path):
    command = [sys.executable, "-m", "train", "trainer.max_steps=5", *QUIET]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(run_dirs(tmp_path)) == 2


def test_help_lists_groups_and_cfg_prints_the_config(tmp_path):
    help_text = run_cli("--help", cwd=tmp_path).stdout
    for group in ("task: eigen, inverse, linreg, lowrank, mlp, quadratic", "optimizer: adam, adamw, lbfgs, momentum, rmsprop, sgd", "scheduler:", "trainer:"):
        assert group in help_text
    config = run_cli("task=lowrank", "--cfg", "job", "--resolve", cwd=tmp_path).stdout
    assert "_target_: descend.tasks.lowrank.LowRankTask" in config and "lr: 0.01" in config
    assert not (tmp_path / "outputs").exists()


def test_a_plateau_scheduler_waits_for_a_validation_metric_and_refuses_one_never_logged(tmp_path):
    common = ["task=mlp", "scheduler=plateau", "trainer.max_steps=60", *QUIET]
    proc = run_cli(*common, "scheduler.monitor=val/mse", cwd=tmp_path)
    assert "watches val/mse" in proc.stdout and "the next at step " in proc.stdout
    assert metrics(only_run(tmp_path))["status"] == "completed"
    line = one_line_error(run_cli(*common, "scheduler.monitor=val/nope", cwd=tmp_path, expect=2))
    assert "scheduler.monitor='val/nope' is never logged" in line


@pytest.mark.parametrize(("overrides", "culprit"), [
    (["ckpt_path=nope.ckpt"], "nope.ckpt: no such file; give a checkpoint file"),
    (["-m", "optimizer.lr=0.1,0.2", "hydra.launcher.pruner.rule=halving"],
     "hydra.launcher.pruner.rule=halving: pruner works inside a population sweep; add hydra/launcher=population"),
])
def test_refused_before_any_folder_is_made(tmp_path, overrides, culprit):
    proc = run_cli(*overrides, *QUIET, cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    assert not (tmp_path / "outputs").exists()  # nothing written: no run folder, no sweep folder
