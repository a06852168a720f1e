"""Theory beside a sweep's results, for summary.md and pictures in the sweep folder (multirun.py):

- sharpness.png: each job's `curvature/sharpness` (callbacks.sharpness) against its step, beside
  its stability threshold (2/lr for SGD), and its loss: the edge of stability (Cohen et al. 2021).
- momentum.png: a quadratic task swept over optimizer.lr × optimizer.momentum: the final excess
  loss over the grid, the heavy ball's stability boundary lr = (2 + 2β)/λmax and Polyak's
  (α*, β*) (theory.heavy_ball_optimum).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LR, MOMENTUM = "optimizer.lr", "optimizer.momentum"


def theory_sections(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """summary.md's sections on sharpness and the momentum plane ('' when neither applies),
    drawing their pictures into the sweep folder."""
    return momentum_plane(sweep_dir, rows) + sharpness_curves(sweep_dir, rows)


# ---- the heavy ball's lr × momentum plane ----

def momentum_plane(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    from descend.multirun import finite_loss, swept_numbers
    from descend.theory import heavy_ball_optimum

    tasks = sorted({r["task"] for r in rows})
    if len(tasks) != 1:
        return ""
    swept = swept_numbers(rows)
    theories = [r["theory"] for r in rows if r.get("theory")]
    if LR not in swept or MOMENTUM not in swept or not theories:
        return ""
    low, high = theories[0]["eigenvalue_min"], theories[0]["eigenvalue_max"]
    best = heavy_ball_optimum(low, high)
    alpha, beta, rate = best["heavy_ball_lr_optimal"], best["heavy_ball_momentum_optimal"], best["heavy_ball_rate"]
    metric = "ref/excess_loss"
    points = [(lr, m, finite_loss(row, metric)) for lr, m, row in zip(swept[LR], swept[MOMENTUM], rows)]
    draw_momentum_plane(points, high, alpha, beta, sweep_dir / "momentum.png")
    finished = [p for p in points if p[2] is not None]
    text = (f"\nHeavy ball on this quadratic (λmin {low:.4g}, λmax {high:.4g}; see README, What theory predicts): "
            f"stable for lr < (2 + 2β)/λmax; fastest at lr α* = {alpha:.4g}, momentum β* = {beta:.4g}, "
            f"where the error shrinks by {rate:.4g} per step (Polyak 1964). momentum.png draws the final {metric} over the grid.\n")
    if finished:
        lr, m, value = min(finished, key=lambda p: p[2])
        shown = f"{value:.4g}" if value > 0 else f"{value:.4g} (rounding: at the optimum)"
        text += f"Lowest final {metric} in the grid: {shown} at optimizer.lr={lr:g}, optimizer.momentum={m:g}.\n"
    unstable = [p for p in points if p[0] >= (2 + 2 * p[1]) / high]
    text += (f"Jobs past the boundary: {len(unstable)}, of which {sum(p[2] is None for p in unstable)} diverged "
             f"(and {sum(p[2] is None for p in points if p not in unstable)} diverged inside it).\n")
    return text


def draw_momentum_plane(points: list[tuple[float, float, float | None]], high: float, alpha: float, beta: float, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5), dpi=90)
    axes = figure.subplots()
    finished = [p for p in points if p[2] is not None]
    if finished:  # an excess loss at rounding (≤ 0) is drawn at a tenth of the smallest positive one
        positive = [p[2] for p in finished if p[2] > 0]
        floor = min(positive) / 10 if positive else 1e-300
        values = [math.log10(max(p[2], floor)) for p in finished]
        dots = axes.scatter([p[0] for p in finished], [p[1] for p in finished], c=values, s=160, marker="s", cmap="viridis")
        figure.colorbar(dots, ax=axes, label="log10 final excess loss")
    failed = [p for p in points if p[2] is None]
    if failed:
        axes.plot([p[0] for p in failed], [p[1] for p in failed], "x", color="red", markersize=10, label="diverged / failed")
    momenta = np.linspace(0, max(max(p[1] for p in points), beta) * 1.05, 100)
    axes.plot((2 + 2 * momenta) / high, momenta, "--", color="tab:red", label="stability boundary lr = (2+2β)/λmax")
    axes.plot([alpha], [beta], "*", color="gold", markeredgecolor="black", markersize=16, label=f"(α*, β*) = ({alpha:.3g}, {beta:.3g})")
    axes.set_xlabel(LR)
    axes.set_ylabel(MOMENTUM)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.25, 1), borderaxespad=0)
    axes.grid(True, alpha=0.3)
    figure.savefig(path, bbox_inches="tight")


# ---- the edge of stability ----

def sharpness_curves(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    from descend.api import load

    curves = {}
    measured = measured_sharpness(sweep_dir / rows[0]["job"]) if alike_callbacks(rows) else None
    for row in sorted(rows, key=lambda r: r["job"]):  # in job order: the colours follow the swept values
        if measured if measured is not None else measured_sharpness(sweep_dir / row["job"]):
            read = load(sweep_dir / row["job"]).curves
            if "curvature/sharpness" in read:
                curves[row["job"]] = read
    if not curves:
        return ""
    draw_sharpness(curves, sweep_dir / "sharpness.png")
    lines = ["\nSharpness (callbacks.sharpness: the top eigenvalue of the training loss's Hessian on the full batch) "
             "against the optimiser's stability threshold (2/lr for SGD), at the last step; sharpness.png draws them:\n\n",
             "| job | sharpness at the start | largest | last | threshold | last / threshold |\n|---|---|---|---|---|---|\n"]
    for job, read in curves.items():
        sharpness = read["curvature/sharpness"].values
        threshold = read["curvature/threshold"].values[-1] if "curvature/threshold" in read else math.nan
        lines.append(f"| {job} | {sharpness[0]:.4g} | {max(sharpness):.4g} | {sharpness[-1]:.4g} | {threshold:.4g} | "
                     f"{sharpness[-1] / threshold:.3f} |\n")
    return "".join(lines)


def alike_callbacks(rows: list[dict[str, Any]]) -> bool:
    """Whether the jobs' callbacks settings are the same for all: their overrides differ only in
    values of dotted keys outside `callbacks` (multirun.job_rows keeps only the overrides that
    differ), as a learning-rate sweep's do. No group choice (task=, +experiment=) among them,
    which could set callbacks too. Then one job's config answers for all (a 1024-job summary read
    1024 config.yaml files for it)."""
    for row in rows:
        for item in row["overrides"].split():
            key = item.partition("=")[0].lstrip("+~")
            if "." not in key or "/" in key or key.startswith(("callbacks.", "hydra.")):
                return False
    return True


def measured_sharpness(job: Path) -> bool:
    """Whether the job ran callbacks.sharpness (its saved config says so): only those are read back."""
    from descend.configtext import read_yaml

    config = job / ".hydra" / "config.yaml"
    if not config.is_file():
        return False
    node = ((read_yaml(config) or {}).get("callbacks") or {}).get("sharpness") or {}
    return bool(node.get("every_n_steps"))


def draw_sharpness(curves: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    from descend.plots import plain_log_labels

    figure = Figure(figsize=(13, 4.5), dpi=90)
    sharp, loss = figure.subplots(1, 2)
    for index, (job, read) in enumerate(curves.items()):
        colour = f"C{index}"
        series = read["curvature/sharpness"]
        sharp.plot(series.steps, series.values, color=colour, label=job)
        if "curvature/threshold" in read:
            threshold = read["curvature/threshold"]
            sharp.plot(threshold.steps, threshold.values, "--", color=colour, alpha=0.7)
        if "train/loss" in read:
            loss.plot(read["train/loss"].steps, read["train/loss"].values, color=colour, label=job)
    sharp.set_title("sharpness (solid) and stability threshold 2/lr (dashed)")
    sharp.set_xlabel("step")
    sharp.set_ylabel("top Hessian eigenvalue")
    loss.set_title("training loss")
    loss.set_xlabel("step")
    loss.set_yscale("log")
    for axes in (sharp, loss):
        axes.grid(True, alpha=0.3)
        plain_log_labels(axes)
    loss.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
