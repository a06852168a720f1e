"""What runs around a multirun: job folders that sort in job order, and at the end the summary
of all jobs at the sweep's root.

    summary.csv / summary.md   one row per job: overrides, status, final loss, distances to the
                               closed form, steps, wall time; sorted by final loss (failures last)
    summary.png                one row of panels per task: final loss against each swept numeric key
                               (a line per combination of the other overrides), or per job by name
                               when no number was swept; log axes across decades
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
    swept = [o for o in overrides if o.is_sweep_override()]
    if not swept and is_basic_sweeper(config):
        return []
    return sorted({o.key_or_group for o in overrides if not o.is_sweep_override()})


def job_number(num: int) -> str:
    """A job's number zero-padded to the digits of the sweep's last job, at least two
    (00, 01, … 15; 000 … 120), so that job folders, TensorBoard's run list and its HPARAMS
    table sort in job order. An unknown count (another sweeper) gets two digits."""
    count = os.environ.get(JOB_COUNT)
    width = max(2, len(str(int(count) - 1))) if count else 2
    return str(num).zfill(width)


def register_resolvers() -> None:
    """${descend.job_number:${hydra.job.num}} in conf/hydra/default.yaml's sweep.subdir."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("descend.job_number"):
        OmegaConf.register_new_resolver("descend.job_number", job_number)


# the rows of the sweep that ended last in this process: the command's exit status comes from them
finished_sweep: list[dict[str, Any]] = []


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before the first job: the job count, for the width of the job numbers, and the keys
        every job sets alike, added to override_dirname's exclude_keys as a hydra override,
        which every job composes with (Hydra's load_sweep_config), whichever launcher runs it."""
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
    counts = ", ".join(f"{n} {s}" for s in ("completed", "diverged", "failed") if (n := sum(r["status"] == s for r in rows)))
    print(f"\ndescend: sweep of {len(rows)} jobs: {counts}")
    tasks = sorted({r["task"] for r in rows})
    for task in tasks:
        best = next(r for r in rows if r["task"] == task)  # rows are ranked task by task
        if finite_loss(best) is not None:
            print(f"  best{' ' + task if len(tasks) > 1 else ''}: {best['job']}   {OBJECTIVE} {best[OBJECTIVE]:.4g}")
    sweep_dir = sweep_dir.resolve()
    print(f"  sweep folder: {sweep_dir}\n  summary: {sweep_dir / 'summary.md'}\n  tensorboard --logdir {sweep_dir}")


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder that holds a metrics.json, sorted by the objective."""
    import yaml

    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        record = read_metrics(job)
        if record is None:
            continue
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        rows.append({"job": job.name, "task": record.get("task", "?"), "overrides": overrides or [], "status": record["status"],
                     **record.get("metrics", {}), "steps": record.get("steps"), "wall_time_s": record.get("wall_time_s"),
                     "error": record.get("error") or "", "theory": record.get("theory") or {}})

    # show what tells the jobs apart: overrides shared by every job are the sweep's constants
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)

    def key(row: dict[str, Any]) -> tuple[str, int, float]:
        # jobs of different tasks have losses of different problems: each task is ranked on its own
        loss = finite_loss(row)
        return (row["task"], 0, loss) if loss is not None else (row["task"], 1, math.inf)

    return sorted(rows, key=key)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    metric_names = sorted({k for row in rows for k in row} - {"job", "task", "overrides", "status", "steps", "wall_time_s", "error", "theory", OBJECTIVE})
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
    header = f"# Sweep summary: {sweep_dir}\n\n{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f". Sorted by final {OBJECTIVE}" + (", task by task" if len({r["task"] for r in rows}) > 1 else "") + ".\n\n"
    theory_lines = [f"- {task}: lr_critical = {t['lr_critical']:.4g} (2/λmax, the largest stable step of plain SGD), "
                    f"lr_optimal = {t['lr_optimal']:.4g} (2/(λmin + λmax), the fastest), condition number {t['condition_number']:.4g}\n"
                    for task, t in task_theory(rows).items()]
    if theory_lines:
        header += "What the Hessian predicts (see README, What theory predicts):\n\n" + "".join(theory_lines) + "\n"
    (sweep_dir / "summary.md").write_text(header + "\n".join(table) + "\n")
    plot_summary(rows, sweep_dir / "summary.png")
    return rows


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


def finite_loss(row: dict[str, Any]) -> float | None:
    value = row.get(OBJECTIVE)
    ok = row["status"] == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
    return float(value) if ok else None


def plot_summary(rows: list[dict[str, Any]], path: Path) -> None:
    """One row of panels per task (their losses are not comparable); in each, the final loss against
    every swept number, or job by job, named, when only options were swept."""
    from matplotlib.figure import Figure

    tasks = sorted({row["task"] for row in rows})
    panels = {task: swept_numbers([r for r in rows if r["task"] == task]) or {"": []} for task in tasks}
    columns = max(len(p) for p in panels.values())
    figure = Figure(figsize=(5.5 * columns, 4 * len(tasks)), dpi=90)
    grid = figure.subplots(len(tasks), columns, squeeze=False)
    for axes_row, task in zip(grid, tasks):
        task_rows = [r for r in rows if r["task"] == task]
        for axes, key in zip(axes_row, panels[task]):
            if key:
                plot_against_number(axes, task_rows, key, panels[task][key])
            else:
                plot_by_job(axes, task_rows)
            axes.set_title(task if len(tasks) > 1 else "")
            axes.set_ylabel(f"final {OBJECTIVE}")
            axes.grid(True, alpha=0.3)
        for axes in axes_row[len(panels[task]):]:
            axes.set_visible(False)
    figure.tight_layout()
    figure.savefig(path)


def loss_axis(axes: Any, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """A log axis across decades; an exact zero is drawn a decade below the smallest positive loss
    (not at 1e-300, which would squash every other point). Returns (floor, ceiling): where zeros and
    failed jobs are drawn."""
    losses = [v for v in map(finite_loss, rows) if v is not None]
    positive = [v for v in losses if v > 0]
    log = bool(positive) and (max(positive) / min(positive) >= 100 or len(positive) < len(losses))
    if log:
        axes.set_yscale("log")
    floor = min(positive) / 10 if positive else 0.0
    ceiling = (max(losses) * (10 if log else 1.2) if losses and max(losses) > 0 else 1.0)
    return (floor if log else 0.0), ceiling


def plot_against_number(axes: Any, rows: list[dict[str, Any]], key: str, xs: list[float]) -> None:
    """A line per combination of the other overrides (sgd and adam over the same learning rates)."""
    floor, ceiling = loss_axis(axes, rows)
    series: dict[str, list[tuple[float, float]]] = {}
    failed = []
    for x, row in zip(xs, rows):
        loss = finite_loss(row)
        others = " ".join(o for o in row["overrides"].split() if o.partition("=")[0] != key)
        if loss is None:
            failed.append(x)
        else:
            series.setdefault(others, []).append((x, max(loss, floor)))
    for label, points in sorted(series.items()):
        points.sort()
        axes.plot([x for x, _ in points], [y for _, y in points], "o-", label=label or "completed")
    if failed:
        axes.plot(failed, [ceiling] * len(failed), "x", color="red", markersize=10, label="diverged / failed")
    mark_zeros(axes, [x for x, row in zip(xs, rows) if finite_loss(row) == 0], floor)
    theory = task_theory(rows).get(rows[0]["task"]) if key == "optimizer.lr" else None
    if theory:  # where theory puts the fastest and the largest stable step size
        axes.axvline(theory["lr_optimal"], color="tab:green", linestyle=":", label=f"lr_optimal {theory['lr_optimal']:.3g}")
        axes.axvline(theory["lr_critical"], color="tab:red", linestyle="--", label=f"lr_critical {theory['lr_critical']:.3g}")
    if all(x > 0 for x in xs) and max(xs) / min(xs) >= 100:
        axes.set_xscale("log")
    axes.set_xlabel(key)
    axes.legend(fontsize="small")


def mark_zeros(axes: Any, xs: list[float], floor: float) -> None:
    if xs and axes.get_yscale() == "log":
        axes.plot(xs, [floor] * len(xs), "v", color="tab:green", markersize=9, label="exactly 0 (drawn at the floor)")
        axes.legend(fontsize="small")


def plot_by_job(axes: Any, rows: list[dict[str, Any]]) -> None:
    """Options only (optimizer=sgd,adam): one named point per job, in job order."""
    floor, ceiling = loss_axis(axes, rows)
    ordered = sorted(rows, key=lambda r: r["job"])
    # the panel is the task's: its name in every label says nothing
    names = [" ".join(o for o in r["overrides"].split() if not o.startswith("task=")) or r["job"] for r in ordered]
    for i, row in enumerate(ordered):
        loss = finite_loss(row)
        if loss is None:
            axes.plot([i], [ceiling], "x", color="red", markersize=10)
        else:
            axes.plot([i], [max(loss, floor)], "o", color="tab:blue")
    mark_zeros(axes, [i for i, row in enumerate(ordered) if finite_loss(row) == 0], floor)
    axes.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center", fontsize="small")
    axes.set_xlabel("job (red x: diverged or failed)")
