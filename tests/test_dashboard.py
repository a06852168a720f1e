"""The dashboard at first open, read from a real `tensorboard` on 127.0.0.1 over HTTP (what its
pages fetch) and from the event files: which tag groups TIME SERIES and SCALARS expand, the
custom-scalars page, the HPARAMS columns and metrics, where final/* and the curves end."""

from __future__ import annotations

import functools
import json
import re
import urllib.request
from pathlib import Path

import pytest

from conftest import QUIET, metrics, run_cli, scalars, tensorboard_events
from test_sweep import _get, _tensorboard


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """An lr × seed sweep, a lowrank run of a picture given by a relative path, an mlp run."""
    import numpy as np
    from PIL import Image

    cwd = tmp_path_factory.mktemp("dashboard")
    Image.fromarray((np.arange(12 * 16).reshape(12, 16) % 251).astype(np.uint8)).save(cwd / "pic.png")
    run_cli("-m", "optimizer.lr=0.1,0.46", "seed=1,2", "trainer.max_steps=25", *QUIET, cwd=cwd)
    lowrank = run_cli("task=lowrank", "task.matrix.path=pic.png", "trainer.max_steps=25", *QUIET, cwd=cwd)
    run_cli("task=mlp", "trainer.max_steps=30", *QUIET, cwd=cwd)
    return cwd / "outputs", lowrank.stdout


def run_folders(outputs: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(outputs)): p.parent for p in outputs.rglob("metrics.json")}


def compare_tag_names(a: str, b: str) -> int:
    """TensorBoard's frontend order of tags (compareTagNames in its tb_sorting): digit runs by
    value, '/' and digits before any other character, else by character code."""
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if a[i].isdigit() and b[j].isdigit():
            ni, nj = re.match(r"\d+", a[i:]).group(), re.match(r"\d+", b[j:]).group()
            if int(ni) != int(nj):
                return -1 if int(ni) < int(nj) else 1
            i, j = i + len(ni), j + len(nj)
            continue
        breaks = (a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit())
        if breaks[0] != breaks[1]:
            return -1 if breaks[0] else 1
        if a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def groups(tags: list[str]) -> list[str]:
    """The tag groups in TensorBoard's order: the text before the first '/', by first appearance
    among the sorted tags. TIME SERIES and SCALARS expand the first two on first open."""
    ordered = sorted(tags, key=functools.cmp_to_key(compare_tag_names))
    return list(dict.fromkeys(tag.split("/", 1)[0] for tag in ordered))


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_curves_a_run_exists_for_are_the_first_two_groups_and_final_sits_at_their_end(outputs):
    root, _ = outputs
    server, base = _tensorboard(root)
    try:
        folders = run_folders(root)
        scalar_tags, image_tags = _get(base, "/data/plugin/scalars/tags"), _get(base, "/data/plugin/images/tags")
        assert set(scalar_tags) == set(folders)  # every run is named by its path, none "."
        for run, folder in folders.items():
            tags = list(scalar_tags[run]) + list(image_tags.get(run, {}))
            order = groups(tags)
            second = "evaluation" if "/mlp" in run or run.endswith("_mlp") else "distance"
            assert order[:2] == ["descent", second], (run, order)
            assert {"final", "images"} <= set(order[2:]), (run, order)  # one-dot cards and pictures after
            assert {t for t in tags if t.startswith("descent/")} == {
                "descent/train/loss", "descent/train/log10_loss", "descent/train/grad_norm", "descent/train/log10_grad_norm"}
            if second == "distance":
                assert {"distance/ref/rel_error", "distance/ref/log10_rel_error"} <= {t for t in tags if t.startswith("distance/")}
            # the curves' last point is at the run's last step, where final/* stands, with its value
            steps = metrics(folder)["steps"]
            loss = _get(base, "/data/plugin/scalars/scalars", run=run, tag="descent/train/loss")
            final = _get(base, "/data/plugin/scalars/scalars", run=run, tag="final/loss")
            assert loss[-1][1] == final[0][1] == steps, run
            assert loss[-1][2] == pytest.approx(final[0][2], rel=1e-6), run
        assert groups([t for run in scalar_tags for t in scalar_tags[run]] + [t for run in image_tags for t in image_tags[run]])[:2] == [
            "descent", "distance"]
        # no empty custom-scalars chart, whatever the tasks: each chart plots one quantity some run has
        (category,) = _get(base, "/data/plugin/custom_scalars/layout")["category"]
        everything = {t for run in scalar_tags for t in scalar_tags[run]}
        for chart in category["chart"]:
            (pattern,) = chart["multiline"]["tag"]
            assert any(re.search(pattern, tag) for tag in everything), chart["title"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hparams_shows_final_loss_the_swept_keys_and_the_task_optimizer_and_scheduler(outputs):
    root, _ = outputs
    (sweep,) = root.glob("multirun/*/*")
    server, base = _tensorboard(sweep)
    try:
        experiment = post(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
        assert experiment["metricInfos"][0]["name"]["tag"] == "final/loss"
        infos = experiment["hparamInfos"]
        # TensorBoard shows five columns at first, those marked as differing first
        shown = [h["name"] for h in sorted(infos, key=lambda h: not h.get("differs", False))[:5]]
        assert {"optimizer.lr", "seed", "run"} <= set(shown), shown
        body = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_UNKNOWN", "STATUS_RUNNING"],
                "colParams": [], "startIndex": 0, "sliceSize": 100}
        rows = post(base, "/data/plugin/hparams/session_groups", body)["sessionGroups"]
        assert sorted(row["hparams"]["run"] for row in rows) == sorted(p.name for p in sweep.iterdir() if p.is_dir())
        for row in rows:
            assert (row["hparams"]["task"], row["hparams"]["optimizer"], row["hparams"]["scheduler"]) == ("inverse", "SGD", "none")
    finally:
        server.terminate()
        server.wait(timeout=30)
    # mlp lists its val/ and test/ metrics too, after final/loss
    from tensorboard.plugins.hparams import plugin_data_pb2

    (mlp,) = (p for p in run_folders(root).values() if p.name.endswith("_mlp"))
    content = tensorboard_events(mlp).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos][:3] == ["final/loss", "final/val/mse", "final/test/mse"]


def test_a_picture_run_shows_its_file_by_absolute_path_and_its_readable_name(outputs):
    from tensorboard.plugins.hparams import plugin_data_pb2

    root, console = outputs
    (run,) = (p for p in run_folders(root).values() if p.name.endswith("_lowrank"))
    events = tensorboard_events(run)
    (text,) = events.Tensors("config/text_summary")
    config = text.tensor_proto.string_val[0].decode()
    picture = str(root.parent / "pic.png")
    assert f"path: {picture}" in config and "source: random" not in config and "rows: 10" not in config
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["task.matrix.path"].string_value == picture
    assert not {"task.matrix.source", "task.matrix.rows", "task.matrix.cols"} & set(session.hparams)
    assert session.hparams["task"].string_value == "lowrank" and session.hparams["run"].string_value == run.name
    # the tensorboard command names the run by its folder, not "."
    assert f"tensorboard --logdir {run.parent}" in console and run.name in console
    assert scalars(run)["final/loss"]


def test_tags_file_the_curves_first_and_leave_other_names_as_they_are():
    from descend.tags import tensorboard_tag

    assert [tensorboard_tag(n) for n in ("train/loss", "ref/log10_rel_error", "theory/excess_loss", "baseline/angle_deg",
                                         "reconstruction_rel_error", "val/mse")] == [
        "descent/train/loss", "distance/ref/log10_rel_error", "distance/theory/excess_loss", "distance/baseline/angle_deg",
        "distance/reconstruction_rel_error", "evaluation/val/mse"]
    for name in ("final/loss", "theory/lr_critical", "lr-SGD", "test/mse"):
        assert tensorboard_tag(name) == name
    assert groups(["final/loss", "images/W·M", "lr-SGD", "theory/lr_critical", "descent/train/loss", "distance/ref/rel_error"])[:2] == [
        "descent", "distance"]


def test_a_run_layout_has_a_chart_for_each_curve_it_logs_and_no_other():
    from descend.dashboard import PAGE, layout

    mlp = layout(["train/loss", "train/log10_loss", "train/grad_norm", "lr-Adam"])[PAGE]
    assert list(mlp) == ["log10 loss", "learning rate"]
    inverse = layout(["train/log10_loss", "ref/log10_rel_error", "ref/log10_excess_loss", "theory/log10_excess_loss", "lr-SGD"])[PAGE]
    assert all(len(patterns) == 1 for _, patterns in inverse.values()) and len(inverse) == 5


def test_final_loss_leads_the_hparams_metrics():
    from descend.hparams import ordered_metrics

    record = {"status": "completed", "metrics": {"val/mae": 0.2, "val/mse": 0.1, "test/mse": 0.1, "test/r2": 0.8, "loss": 0.2}}
    assert list(ordered_metrics(record))[:4] == ["final/loss", "final/val/mse", "final/test/mse", "final/diverged"]
    record = {"status": "diverged", "metrics": {"loss": None, "ref/excess_loss": 1.0, "ref/rel_error": 2.0}}
    metrics = ordered_metrics(record)
    assert list(metrics) == ["final/loss", "final/ref/rel_error", "final/ref/excess_loss", "final/diverged"]
    assert metrics["final/diverged"] == 1.0 and metrics["final/loss"] != metrics["final/loss"]  # nan, as JSON's null


def test_the_layout_written_is_add_custom_scalars_own_for_every_run(tmp_path):
    """write_layout makes the custom-scalars summary once for many runs (a population's members):
    each run's event file holds the event SummaryWriter.add_custom_scalars would write."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from torch.utils.tensorboard.summary import custom_scalars

    from descend.dashboard import TensorBoardLogger, layout, write_layout

    names = ["train/loss", "train/log10_loss", "ref/rel_error", "lr-SGD"]
    for run in ("a", "b"):
        logger = TensorBoardLogger(save_dir=str(tmp_path / run), name="", version="")
        write_layout([logger], names)
        logger.experiment.close()
        (events,) = (tmp_path / run).glob("events.out.tfevents.*")
        read = [event_pb2.Event.FromString(record) for record in RawEventFileLoader(str(events)).Load()]
        summaries = [e.summary for e in read if e.HasField("summary")]
        assert [s.SerializeToString() for s in summaries] == [custom_scalars(layout(names)).SerializeToString()]
