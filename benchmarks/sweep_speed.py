"""A learning-rate sweep with the population launcher against one run of the same job, wall clock,
as a user runs them: `python -m train ...` processes, back to back on this machine.

    python benchmarks/sweep_speed.py [--steps 2000] [--members 16 64] [--mlp-members 8] [--basic] [--repeats 2] [--device cpu|cuda]

Prints, for each case, one run's seconds, the sweep's seconds and their ratio. The two alternate,
`--repeats` times, and each keeps its best: this machine's speed drifts from run to run. Targets (issue 9):
16 inverse learning rates ≤ 1.5x one run, 64 ≤ 2x, 8 mlp learning rates ≤ 2x. --basic also times
the same 16-job sweep with Hydra's basic launcher (one job after another), the ratio it replaces.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def seconds(*overrides: str, quiet: bool = False) -> float:
    """Wall time of one `python -m train` process, in a fresh folder; fails loudly if it fails."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "train", *overrides, *QUIET], cwd=folder, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"python -m train {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        if "-m" in overrides and not quiet:
            together = [line for line in proc.stdout.splitlines() if line.startswith("population:")]
            print("    " + "\n    ".join(together or ["(no population line: every job ran alone)"]))
    return elapsed


def learning_rates(count: int, low: float, high: float) -> str:
    return ",".join(f"{low + (high - low) * i / max(count - 1, 1):.4g}" for i in range(count))


def compare(name: str, job: list[str], sweep: list[str], target: float | None, repeats: int) -> None:
    one, many = float("inf"), float("inf")
    for repeat in range(repeats):
        one = min(one, seconds(*job))
        many = min(many, seconds("-m", *job, *sweep, quiet=repeat > 0))
    ratio = many / one
    verdict = "for comparison" if target is None else f"target ≤ {target}x: {'met' if ratio <= target else 'NOT met'}"
    print(f"{name:<44} one run {one:6.2f} s   sweep {many:6.2f} s   ratio {ratio:5.2f}x   ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--members", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--mlp-members", type=int, default=8)
    parser.add_argument("--basic", action="store_true", help="also time the 16-job sweep with the basic launcher")
    parser.add_argument("--repeats", type=int, default=2, help="alternate one run and the sweep this often; keep the best of each")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    inverse = [f"trainer.max_steps={args.steps}", f"trainer.accelerator={accelerator}"]
    population = ["hydra/launcher=population"]
    print(f"python {sys.version.split()[0]}, {args.steps} steps, accelerator {accelerator}")
    for members in args.members:
        target = 1.5 if members <= 16 else 2.0
        compare(f"inverse, {members} learning rates, population", inverse,
                [*population, f"optimizer.lr={learning_rates(members, 0.02, 0.98)}"], target, args.repeats)
    if args.basic:
        compare("inverse, 16 learning rates, basic launcher", inverse, [f"optimizer.lr={learning_rates(16, 0.02, 0.98)}"], None, 1)
    if args.mlp_members:
        mlp = ["task=mlp", "optimizer=adam", f"trainer.max_steps={args.steps}", f"trainer.accelerator={accelerator}"]
        compare(f"mlp, {args.mlp_members} learning rates, population", mlp,
                [*population, f"optimizer.lr={learning_rates(args.mlp_members, 0.0005, 0.01)}"], 2.0, args.repeats)


if __name__ == "__main__":
    main()
