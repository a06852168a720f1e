"""A run's row in TensorBoard's HPARAMS tab: its settings, its final metrics and which of them to
show first, written with TensorBoard's own hparams protos (tensorboard.plugins.hparams).

TensorBoard shows the first five metrics of the experiment and five hyper-parameters, those
marked `differs` first. Every run writes the experiment (the runs of a sweep write the same
one, and TensorBoard reads one of them), so a run says itself what comes first:

- metrics: final/loss, then the distances to the optimum (mlp: val/mse, test/mse), final/diverged;
- hyper-parameters marked as differing: the keys set on the command line that tell the jobs apart
  (the keys of the job folder's name: a sweep's swept keys, a single run's own overrides) and
  `run`, the run folder's name, as the trial IDs of `--logdir outputs` are cut to "multirun/2026-1…";
- columns naming the task, the optimiser and the scheduler (their `_target_` classes), so that
  lowrank and mlp rows, or SGD and Adam rows, tell themselves apart.
"""

from __future__ import annotations

import os
import time
from typing import Any

from omegaconf import DictConfig

# final metrics in the order HPARAMS shows them (the first five by default); the rest follow in
# the order the run recorded them
FIRST_METRICS = ("loss", "ref/rel_error", "ref/excess_loss", "val/mse", "test/mse", "diverged")

# the settings of a file-backed source that the file leaves in use (data/matrix.py, data/table.py:
# a path overrides `source` and the generator's settings; mlp splits a table by data.seed)
FILE_SETTINGS = {"matrix": ("path",), "data": ("path", "target", "columns", "seed")}


def chosen_keys(hydra_cfg: DictConfig, overrides: list[str] | None = None) -> list[str]:
    """The keys a job set on the command line that its folder's name carries: its overrides
    (hydra.overrides.task, or the same list given) less Hydra's override_dirname.exclude_keys
    (display switches, and a sweep's constants, multirun.py)."""
    excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys)
    overrides = hydra_cfg.overrides.task if overrides is None else overrides
    keys = [str(o).split("=", 1)[0].lstrip("+~") for o in overrides]
    return [k for k in keys if k not in excluded]


def shown_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as the dashboard shows it, as plain data, resolved: a matrix or table read from
    a file by its absolute path, without the generator's settings the file leaves unused
    (`source: random, rows: 10`). One conversion serves the text and the HPARAMS entry (a
    population's members each convert theirs, and a conversion costs a millisecond)."""
    from descend.configtext import resolved_data

    shown = resolved_data(cfg)
    task = shown.get("task")
    for name in FILE_SETTINGS:
        node = task.get(name) if isinstance(task, dict) else None
        if isinstance(node, dict) and node.get("path"):
            kept = {key: node[key] for key in FILE_SETTINGS[name] if key in node}
            kept["path"] = os.path.abspath(os.path.expanduser(str(node["path"])))
            task[name] = kept
    return shown


def hyperparameters(shown: dict[str, Any], task_name: str, run_name: str) -> dict[str, Any]:
    """The run's settings (`shown`: shown_config's data), flattened: its name, the task, optimiser
    and scheduler by name and with their arguments, the seed and the step budget."""
    def target(node: Any) -> str:
        return str(node.get("_target_", "?")).rsplit(".", 1)[-1] if node else "none"

    flat: dict[str, Any] = {"run": run_name, "task": task_name, "optimizer": target(shown.get("optimizer")),
                            "scheduler": target(shown.get("scheduler")), "seed": shown.get("seed"),
                            "trainer.max_steps": (shown.get("trainer") or {}).get("max_steps")}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    for group in ("task", "optimizer", "scheduler"):
        if shown.get(group):
            walk(group, shown[group])
    return flat


def with_chosen(flat: dict[str, Any], shown: dict[str, Any], chosen: list[str]) -> dict[str, Any]:
    """`flat` plus the chosen keys it lacks (trainer.precision=64-true, a swept trainer key)."""
    for key in chosen:
        if key not in flat:
            value: Any = shown
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None and not isinstance(value, dict):
                flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def ordered_metrics(record: dict[str, Any]) -> dict[str, float]:
    """final/<name> for every final metric and final/diverged, in FIRST_METRICS' order."""
    values = {**record["metrics"], "diverged": float(record["status"] == "diverged")}
    names = [n for n in FIRST_METRICS if n in values] + [n for n in values if n not in FIRST_METRICS]
    return {f"final/{n}": (values[n] if values[n] is not None else float("nan")) for n in names}


def summaries(values: dict[str, Any], metrics: list[str], differing: set[str], completed: bool) -> list[Any]:
    """The experiment (columns, in order, differing ones marked), the session's start (this run's
    values) and its end (its status), as TensorBoard's hparams plugin reads them."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    def summary(tag: str, data: Any) -> Summary:
        return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)])

    infos = [hparam_info(name, value, name in differing) for name, value in values.items()]
    experiment = api_pb2.Experiment(hparam_infos=infos, time_created_secs=time.time(),
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
    status = api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return [summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            hparams_pb(values, trial_id=""),  # no group name: a session is its own row, named by its run
            summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))]


def hparam_info(name: str, value: Any, differs: bool) -> Any:
    """A column: numbers filter by interval, strings by a pattern. No list of a string's values,
    which would hold this run's value alone: the UI's filter would then hide the other runs' rows."""
    from tensorboard.plugins.hparams import api_pb2

    info = api_pb2.HParamInfo(name=name, differs=differs)
    if isinstance(value, bool):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend([False, True])
    elif isinstance(value, (int, float)):
        info.type = api_pb2.DATA_TYPE_FLOAT64
    else:
        info.type = api_pb2.DATA_TYPE_STRING
    return info
