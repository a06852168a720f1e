"""What runs around a multirun: job folders that sort in job order, and at the end the summary
of all jobs at the sweep's root.

    summary.csv / summary.md   one row per job: overrides, status, final loss, distances to the
                               closed form, steps, wall time; sorted by the task's validation
                               metric where it has one (mlp: val/mse), else final loss (failures last)
    summary.png                one row of panels per task: that metric against each swept numeric key
                               (a line per combination of the other overrides; seeds as categories),
                               or per job by name when no number was swept; log axes across decades
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from descend.results import read_metrics

OBJECTIVE = "loss"
# what ranks a task's jobs: its validation metric where it has one (mlp), else the final training loss
RANKED_BY = ("val/mse", OBJECTIVE)
# swept numbers that name rather than measure: drawn as categories, without lines joining them
CATEGORICAL = ("seed",)

# The sweep's job count, from the sweep's start to its jobs (in this process, joblib's worker
# processes and SLURM jobs, which inherit the environment), for the width of the job numbers
JOB_COUNT = "DESCEND_SWEEP_JOBS"


def sweep_overrides(config: DictConfig) -> list[Any] | None:
    """The sweep's overrides as Hydra parses them: the command line's, and for the basic sweeper
    its `params`; None for a sweep descend cannot read (a glob() needs Hydra's config loader)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    params = sweeper.get("params") if is_basic_sweeper(config) else None
    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + list(config.hydra.overrides.task)
    try:
        return OverridesParser.create().parse_overrides(arguments)
    except Exception:
        return None


def is_basic_sweeper(config: DictConfig) -> bool:
    return str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")


def job_count(config: DictConfig, overrides: list[Any] | None) -> int | None:
    """How many jobs the sweep runs: an Optuna search's n_trials, or the combinations of the
    swept values, counted by Hydra's BasicSweeper itself; None for any other sweeper."""
    if "n_trials" in config.hydra.sweeper:
        return int(config.hydra.sweeper.n_trials)
    if overrides is None or not is_basic_sweeper(config):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # a sweep type BasicSweeper refuses: it reports that itself
        return None


def constant_keys(config: DictConfig, overrides: list[Any] | None) -> list[str]:
    """The keys every job sets alike (task=inverse in `-m task=inverse optimizer.lr=0.1,0.5`):
    left out of the job folders' names, which then say what tells the jobs apart. Kept when
    nothing is swept, so that a one-job sweep's folder still names its overrides."""
    if overrides is None or not (is_basic_sweeper(config) or "n_trials" in config.hydra.sweeper):
        return []
    swept = [o for o in overrides if o.is_sweep_override() and not one_value(o)]
    if not swept and is_basic_sweeper(config):
        return []
    return sorted({o.key_or_group for o in overrides if not o.is_sweep_override() or one_value(o)})


def one_value(override: Any) -> bool:
    """A sweep of a single value, choice(0.5): what prechecks.keys_of_swept_groups makes of a key set once
    for every option of a swept group (`-m scheduler=step,exponential scheduler.gamma=0.5`)."""
    return override.is_choice_sweep() and len(list(override.sweep_string_iterator())) == 1


def job_number(num: int) -> str:
    """A job's number zero-padded to the digits of the sweep's last job, at least two
    (00, 01, … 15; 000 … 120), so that job folders, TensorBoard's run list and its HPARAMS
    table sort in job order. An unknown count (another sweeper) gets two digits."""
    count = os.environ.get(JOB_COUNT)
    width = max(2, len(str(int(count) - 1))) if count else 2
    return str(num).zfill(width)


# what a job's overrides may hold that a folder name cannot: a path's separators (a sweep over
# data files, task.data.path=data/a/houses.csv) would nest the job three folders deep, where
# neither the summary nor TensorBoard's run names find it
NAME_SEPARATORS = str.maketrans({"/": "\u2215", "\\": "\u2215", "\0": ""})  # ∕ DIVISION SLASH reads as a slash
NAME_BYTES = 200  # below the 255 bytes a folder name may have, with room for the job number


def folder_name(override_dirname: str) -> str:
    """A job's overrides as one folder name (sweep.subdir): `/` shown as `∕`, which reads the same
    and nests nothing; a name too long for the file system is cut and given a short hash of the
    whole, so that jobs still get folders of their own. The summary shows the values as given."""
    import hashlib

    name = override_dirname.translate(NAME_SEPARATORS)
    if len(name.encode()) <= NAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    cut = name.encode()[: NAME_BYTES - 10].decode(errors="ignore")
    return f"{cut}…{digest}"


def register_resolvers() -> None:
    """${descend.job_number:${hydra.job.num}} and ${descend.folder_name:…} in
    conf/hydra/default.yaml's sweep.subdir."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("descend.job_number"):
        OmegaConf.register_new_resolver("descend.job_number", job_number)
    if not OmegaConf.has_resolver("descend.folder_name"):
        OmegaConf.register_new_resolver("descend.folder_name", folder_name)


# the rows of the sweep that ended last in this process: the command's exit status comes from them
finished_sweep: list[dict[str, Any]] = []
# the folder of the sweep started last in this process (descend.sweep lists its jobs from it)
started_sweep: list[Path] = []


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before the first job: the job count, for the width of the job numbers, and the keys
        every job sets alike, added to override_dirname's exclude_keys as a hydra override,
        which every job composes with (Hydra's load_sweep_config), whichever launcher runs it."""
        started_sweep[:] = [Path(config.hydra.sweep.dir)]
        overrides = sweep_overrides(config)
        count = job_count(config, overrides)
        if count is None:
            os.environ.pop(JOB_COUNT, None)
        else:
            os.environ[JOB_COUNT] = str(count)
        excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
        added = [k for k in constant_keys(config, overrides) if k not in excluded]
        if added:
            keys = ",".join(repr(k) for k in excluded + added)
            with read_write(config.hydra.overrides):
                config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{keys}]")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            finished_sweep[:] = write_summary(sweep_dir)
            print_closing_lines(sweep_dir, finished_sweep)


def print_closing_lines(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Where to look once the sweep is over: its folder, its summary, its best job, TensorBoard."""
    if not rows:
        print(f"\ndescend: sweep ended with no finished job\n  sweep folder: {sweep_dir}")
        return
    counts = ", ".join(f"{n} {s}" for s in ("completed", "pruned", "diverged", "stopped", "failed") if (n := sum(r["status"] == s for r in rows)))
    print(f"\ndescend: sweep of {len(rows)} jobs: {counts}")
    tasks = sorted({r["task"] for r in rows})
    for task in tasks:
        best = next(r for r in rows if r["task"] == task)  # rows are ranked task by task
        metric = ranking_metric([r for r in rows if r["task"] == task])
        if finite_loss(best, metric) is not None:
            print(f"  best{' ' + task if len(tasks) > 1 else ''}: {best['job']}   {metric} {best[metric]:.4g}")
    sweep_dir = sweep_dir.resolve()
    print(f"  sweep folder: {sweep_dir}\n  summary: {sweep_dir / 'summary.md'}\n  tensorboard --logdir {sweep_dir}")


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder that holds a metrics.json, sorted by the objective."""
    from descend.configtext import read_yaml

    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        record = read_metrics(job)
        if record is None:
            continue
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = read_yaml(overrides_file) if overrides_file.is_file() else []
        rows.append({"job": job.name, "task": record.get("task", "?"), "overrides": overrides or [], "status": record["status"],
                     **record.get("metrics", {}), "steps": record.get("steps"), "wall_time_s": record.get("wall_time_s"),
                     "error": record.get("error") or "", "theory": record.get("theory") or {}, "lineage": record.get("lineage") or []})

    # show what tells the jobs apart: overrides shared by every job are the sweep's constants
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)

    metrics = {task: ranking_metric([r for r in rows if r["task"] == task]) for task in {r["task"] for r in rows}}

    def key(row: dict[str, Any]) -> tuple[str, int, float, float]:
        # jobs of different tasks have losses of different problems: each task is ranked on its own;
        # pruned jobs after the completed ones, the later a job was stopped the higher, then by its loss
        loss = finite_loss(row, metrics[row["task"]])
        if loss is not None:
            return (row["task"], 0, 0.0, loss)
        if row["status"] == "pruned":
            value = row.get(metrics[row["task"]])
            value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf
            return (row["task"], 1, -float(row.get("steps") or 0), value)
        return (row["task"], 2, 0.0, math.inf)

    return sorted(rows, key=key)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    metric_names = sorted({k for row in rows for k in row} - {"job", "task", "overrides", "status", "steps", "wall_time_s", "error", "theory",
                                                              "lineage", OBJECTIVE})
    columns = ["job", "task", "overrides", "status", OBJECTIVE, *metric_names, "steps", "wall_time_s", "error"]
    with (sweep_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "diverged", "failed")}
    if any(r["status"] == "pruned" for r in rows):  # a pruner stopped these (population/pruning.py)
        counts["pruned"] = sum(r["status"] == "pruned" for r in rows)
    if any(r["status"] == "stopped" for r in rows):  # a signal ended the sweep
        counts["stopped"] = sum(r["status"] == "stopped" for r in rows)
    header = f"# Sweep summary: {sweep_dir}\n\n{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f". {ranking_text(rows)}.\n\n"
    from descend.theory import plain_sgd_summary  # here: theory imports torch, which the CLI's start need not wait for

    theory_lines = [f"- {task}: lr_critical = {t['lr_critical']:.4g} (2/λmax, the largest stable step of plain SGD), "
                    f"lr_optimal = {t['lr_optimal']:.4g} (2/(λmin + λmax), the fastest), condition number {t['condition_number']:.4g}"
                    + ("" if plain_sgd_summary(t) else optimiser_limit(rows, task)) + "\n"
                    for task, t in task_theory(rows).items()]
    if theory_lines:
        header += "What the Hessian predicts (see README, What theory predicts):\n\n" + "".join(theory_lines) + "\n"
    from descend.population.pbt import pbt_summary  # PBT's copies, where a job has a lineage
    from descend.theory_plots import theory_sections  # sharpness.png, momentum.png, where they apply

    (sweep_dir / "summary.md").write_text(header + "\n".join(table) + "\n" + pbt_summary(sweep_dir, rows) + theory_sections(sweep_dir, rows))
    plot_summary(rows, sweep_dir / "summary.png")
    return rows


def ranking_metric(rows: list[dict[str, Any]]) -> str:
    """What ranks these jobs (of one task): the first of RANKED_BY a completed job reports."""
    return next((m for m in RANKED_BY if any(finite_loss(r, m) is not None for r in rows)), OBJECTIVE)


def ranking_text(rows: list[dict[str, Any]]) -> str:
    """How summary.md is sorted: `Sorted by final loss`, or per task where they differ."""
    tasks = sorted({r["task"] for r in rows})
    metrics = {task: ranking_metric([r for r in rows if r["task"] == task]) for task in tasks}
    named = {m: " (validation)" if m.startswith("val/") else "" for m in metrics.values()}
    if len(set(metrics.values())) == 1:
        metric = next(iter(metrics.values()))
        return f"Sorted by final {metric}{named[metric]}" + (", task by task" if len(tasks) > 1 else "")
    return "Sorted task by task, by final " + ", ".join(f"{m}{named[m]} for {t}" for t, m in metrics.items())


def optimiser_limit(rows: list[dict[str, Any]], task: str) -> str:
    """For jobs whose optimiser is not plain SGD: their own limits, which plain SGD's do not bound."""
    limits = sorted({r["theory"]["lr_limit"] for r in rows if r["task"] == task and (r.get("theory") or {}).get("lr_limit") is not None})
    text = "; these jobs' optimiser is not plain SGD: "
    if not limits:
        return text + "theory predicts no stable step for it"
    shown = ", ".join(f"{v:.4g}" for v in limits[:6]) + (", …" if len(limits) > 6 else "")
    return text + f"its lr_limit (the largest stable step) is {shown}"


def task_theory(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each quadratic task's lr_critical and lr_optimal, where all its jobs share one problem."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        theories = [r["theory"] for r in rows if r["task"] == task and r.get("theory")]
        if theories and all(math.isclose(t["lr_critical"], theories[0]["lr_critical"], rel_tol=1e-9) for t in theories):
            out[task] = theories[0]
    return out


def swept_numbers(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each override key whose values are numbers and differ between jobs."""
    values: dict[str, list[float | None]] = {}
    for i, row in enumerate(rows):
        for item in row["overrides"].split():
            key, _, raw = item.partition("=")
            try:
                number = float(raw)
            except ValueError:
                continue
            values.setdefault(key, [None] * len(rows))[i] = number
    return {k: v for k, v in values.items() if None not in v and len(set(v)) > 1}


def finite_loss(row: dict[str, Any], metric: str = OBJECTIVE) -> float | None:
    """The row's finite value of `metric` (the final loss by default) if the job completed, else None."""
    value = row.get(metric)
    ok = row["status"] == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
    return float(value) if ok else None


def plot_summary(rows: list[dict[str, Any]], path: Path) -> None:
    summary_figure(rows).savefig(path, bbox_inches="tight")  # "tight": legends sit outside the panels


def summary_figure(rows: list[dict[str, Any]]) -> Any:
    """One row of panels per task (their losses are not comparable); in each, the ranking metric
    (ranking_metric) against every swept number, or job by job, named, when only options were swept."""
    from matplotlib.figure import Figure

    from descend.plots import plain_log_labels

    tasks = sorted({row["task"] for row in rows})
    panels = {task: swept_numbers([r for r in rows if r["task"] == task]) or {"": []} for task in tasks}
    columns = max(len(p) for p in panels.values())
    figure = Figure(figsize=(7 * columns, 4 * len(tasks)), dpi=90)
    grid = figure.subplots(len(tasks), columns, squeeze=False)
    for axes_row, task in zip(grid, tasks):
        task_rows = [r for r in rows if r["task"] == task]
        metric = ranking_metric(task_rows)
        for axes, key in zip(axes_row, panels[task]):
            if key:
                plot_against_number(axes, task_rows, key, panels[task][key], metric)
            else:
                plot_by_job(axes, task_rows, metric)
            axes.set_title(task if len(tasks) > 1 else "")
            axes.set_ylabel(f"final {metric}")
            axes.grid(True, alpha=0.3)
            plain_log_labels(axes)
        for axes in axes_row[len(panels[task]):]:
            axes.set_visible(False)
    figure.tight_layout()
    return figure


def place_legend(axes: Any) -> None:
    """Beside the panel, where it covers no point."""
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)


def loss_axis(axes: Any, rows: list[dict[str, Any]], metric: str = OBJECTIVE) -> tuple[float, float]:
    """A log axis across decades; an exact zero is drawn a decade below the smallest positive loss
    (not at 1e-300, which would squash every other point). Returns (floor, ceiling): where zeros and
    failed jobs are drawn. Pruned jobs' values (their loss when pruned) are drawn too, and count."""
    losses = [v for v in (finite_loss(r, metric) if r["status"] != "pruned" else pruned_value(r, metric) for r in rows) if v is not None]
    positive = [v for v in losses if v > 0]
    log = bool(positive) and (max(positive) / min(positive) >= 100 or len(positive) < len(losses))
    if log:
        axes.set_yscale("log")
    floor = min(positive) / 10 if positive else 0.0
    ceiling = (max(losses) * (10 if log else 1.2) if losses and max(losses) > 0 else 1.0)
    return (floor if log else 0.0), ceiling


def pruned_value(row: dict[str, Any], metric: str) -> float | None:
    """A pruned job's finite `metric` when it was stopped, else None."""
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def plot_against_number(axes: Any, rows: list[dict[str, Any]], key: str, xs: list[float], metric: str = OBJECTIVE) -> None:
    """A line per combination of the other overrides (sgd and adam over the same learning rates).
    A key that names rather than measures (seed) is drawn as categories, its points not joined;
    a positive range of a decade or more gets a log axis."""
    floor, ceiling = loss_axis(axes, rows, metric)
    categorical = key.rpartition(".")[2] in CATEGORICAL
    if categorical:  # positions 0, 1, … in sorted order, labelled with the values
        values = sorted(set(xs))
        xs = [values.index(x) for x in xs]
    series: dict[str, list[tuple[float, float]]] = {}
    failed, pruned = [], []
    for x, row in zip(xs, rows):
        loss = finite_loss(row, metric)
        others = " ".join(o for o in row["overrides"].split() if o.partition("=")[0] != key)
        value = pruned_value(row, metric) if row["status"] == "pruned" else None
        if value is not None:  # stopped at a rung, its loss there: a result, not a failure
            pruned.append((x, max(value, floor)))
            continue
        if loss is None:
            failed.append(x)
        else:
            series.setdefault(others, []).append((x, max(loss, floor)))
    for label, points in sorted(series.items()):
        points.sort()
        axes.plot([x for x, _ in points], [y for _, y in points], "o" if categorical else "o-", label=label or "completed")
    if pruned:
        axes.plot([x for x, _ in pruned], [y for _, y in pruned], "v", color="tab:gray", markersize=8,
                  label="pruned (its loss when pruned)")
    if failed:
        axes.plot(failed, [ceiling] * len(failed), "x", color="red", markersize=10, label="diverged / failed")
    mark_zeros(axes, [x for x, row in zip(xs, rows) if finite_loss(row, metric) == 0], floor)
    from descend.theory import plain_sgd_summary

    theory = task_theory(rows).get(rows[0]["task"]) if key == "optimizer.lr" else None
    if theory and plain_sgd_summary(theory):  # where theory puts plain SGD's fastest and largest stable step size
        axes.axvline(theory["lr_optimal"], color="tab:green", linestyle=":", label=f"lr_optimal {theory['lr_optimal']:.3g}")
        axes.axvline(theory["lr_critical"], color="tab:red", linestyle="--", label=f"lr_critical {theory['lr_critical']:.3g}")
    if categorical:
        axes.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    elif all(x > 0 for x in xs) and max(xs) / min(xs) >= 10:
        axes.set_xscale("log")
    axes.set_xlabel(key)
    place_legend(axes)


def mark_zeros(axes: Any, xs: list[float], floor: float) -> None:
    if xs and axes.get_yscale() == "log":
        axes.plot(xs, [floor] * len(xs), "v", color="tab:green", markersize=9, label="exactly 0 (drawn at the floor)")
        place_legend(axes)


def plot_by_job(axes: Any, rows: list[dict[str, Any]], metric: str = OBJECTIVE) -> None:
    """Options only (optimizer=sgd,adam): one named point per job, in job order."""
    floor, ceiling = loss_axis(axes, rows, metric)
    ordered = sorted(rows, key=lambda r: r["job"])
    # the panel is the task's: its name in every label says nothing
    names = [" ".join(o for o in r["overrides"].split() if not o.startswith("task=")) or r["job"] for r in ordered]
    for i, row in enumerate(ordered):
        loss = finite_loss(row, metric)
        if loss is None:
            axes.plot([i], [ceiling], "x", color="red", markersize=10)
        else:
            axes.plot([i], [max(loss, floor)], "o", color="tab:blue")
    mark_zeros(axes, [i for i, row in enumerate(ordered) if finite_loss(row, metric) == 0], floor)
    axes.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center", fontsize="small")
    axes.set_xlabel("job (red x: diverged or failed)")
