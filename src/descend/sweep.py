"""What runs around a multirun: job folders that sort in job order, and at the end the summary
of all jobs at the sweep's root.

    summary.csv / summary.md   one row per job: overrides, status, final loss, distances to the
                               closed form, steps, wall time; sorted by final loss (failures last)
    summary.png                final loss against each swept numeric key (log axes across decades)
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
            write_summary(sweep_dir)


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
        rows.append({"job": job.name, "overrides": overrides or [], "status": record["status"],
                     **record.get("metrics", {}), "steps": record.get("steps"), "wall_time_s": record.get("wall_time_s"),
                     "error": record.get("error") or ""})

    # show what tells the jobs apart: overrides shared by every job are the sweep's constants
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared)

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(OBJECTIVE)
        ok = row["status"] == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
        return (0, value) if ok else (1, math.inf)

    return sorted(rows, key=key)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = job_rows(sweep_dir)
    if not rows:
        return rows
    metric_names = sorted({k for row in rows for k in row} - {"job", "overrides", "status", "steps", "wall_time_s", "error", OBJECTIVE})
    columns = ["job", "overrides", "status", OBJECTIVE, *metric_names, "steps", "wall_time_s", "error"]
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
    header = f"# Sweep summary: {sweep_dir}\n\n{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f". Sorted by final {OBJECTIVE}.\n\n"
    (sweep_dir / "summary.md").write_text(header + "\n".join(table) + "\n")
    plot_summary(rows, sweep_dir / "summary.png")
    return rows


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


def plot_summary(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    swept = swept_numbers(rows) or {"job": [float(i) for i in range(len(rows))]}
    figure = Figure(figsize=(5 * len(swept), 4), dpi=90)
    axes_list = figure.subplots(1, len(swept), squeeze=False)[0]
    losses = [row.get(OBJECTIVE) for row in rows]
    finite = [v for v, r in zip(losses, rows) if r["status"] == "completed" and isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    ceiling = max(finite) * 10 if finite else 1.0
    for axes, (key, xs) in zip(axes_list, swept.items()):
        good = [(x, y) for x, y, r in zip(xs, losses, rows) if r["status"] == "completed" and y is not None]
        bad = [x for x, r in zip(xs, rows) if r["status"] != "completed"]
        if good:
            good.sort()
            axes.plot([x for x, _ in good], [max(y, 1e-300) for _, y in good], "o-", label="completed")
        if bad:
            axes.plot(bad, [ceiling] * len(bad), "x", color="red", markersize=10, label="diverged / failed")
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(xs) >= 100:
            axes.set_xscale("log")
        if finite and max(finite) / min(finite) >= 100:
            axes.set_yscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(f"final {OBJECTIVE}")
        axes.legend()
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
