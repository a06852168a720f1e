"""A learning-rate sweep with the population launcher against one run of the same job, wall clock,
as a user runs them: `python -m train ...` processes, back to back on this machine.

    python benchmarks/sweep_speed.py [--steps 2000] [--members 16 64 256 1024] [--mlp-members 8] [--basic] [--repeats 2] [--device cpu|cuda]

Prints, for each case, one run's seconds, the sweep's seconds and their ratio, and each process's
peak resident memory (the OS's ru_maxrss of that child). The two alternate, `--repeats` times, and
each keeps its best: this machine's speed drifts from run to run.

Every process writes into a fresh folder of its own, and all of them are removed only at the end: on
ext4 without a journal (this VM's disk), the kernel skips recently deleted inodes while it allocates
new ones (fs/ext4/ialloc.c, recently_deleted: for 5 s, or 5 min while their inode table block is
dirty), so creating a file right after some thousands were deleted costs up to ~1 ms instead of
~20 us. A sweep removed before the next one is timed would charge that to the next one; a user's
sweep does not follow a mass deletion of its own making. Another large deletion just before (a
previous invocation's clean-up, the test suite) would slow the sweeps the same way: the benchmark
first waits until creating a file costs what it does on this disk at rest (quiet_disk, at most
6 minutes), and prints what it measured. Targets (issues 9 and 21):
16 inverse learning rates ≤ 1.5x one run, 64 and 256 ≤ 2x, 1024 ≤ 4x, 8 mlp learning rates ≤ 2x. --basic also times
the same 16-job sweep with Hydra's basic launcher (one job after another), the ratio it replaces.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


KEPT = tempfile.TemporaryDirectory(prefix="sweep_speed-")  # every run's folder, removed at exit (see above)


def seconds(*overrides: str, quiet: bool = False) -> tuple[float, float]:
    """Wall time and peak resident memory (MB) of one `python -m train` process, in a fresh folder
    kept until the end; fails loudly if it fails."""
    folder = tempfile.mkdtemp(dir=KEPT.name)
    out, err = (open(os.path.join(folder, name), "w+") for name in ("stdout", "stderr"))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "train", *overrides, *QUIET], cwd=folder, stdout=out, stderr=err, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    out.close(), err.close()
    if proc.returncode != 0:
        raise SystemExit(f"python -m train {' '.join(overrides)} exited {proc.returncode}:\n{stderr[-2000:]}")
    if "-m" in overrides and not quiet:
        together = [line for line in stdout.splitlines() if line.startswith("population:")]
        print("    " + "\n    ".join(together or ["(no population line: every job ran alone)"]))
    return elapsed, usage.ru_maxrss / 1024  # kilobytes on Linux


def file_creation_us(folders: int = 200, files: int = 4) -> float:
    """Microseconds of the kernel's time to create a folder or an empty file here, now, laid out as
    a sweep's jobs are (folders of a few files in one folder); the files are kept."""
    root = tempfile.mkdtemp(dir=KEPT.name)
    before = os.times().system
    for index in range(folders):
        folder = os.path.join(root, str(index))
        os.mkdir(folder)
        for name in range(files):
            os.close(os.open(os.path.join(folder, str(name)), os.O_WRONLY | os.O_CREAT, 0o644))
    return (os.times().system - before) / (folders * (files + 1)) * 1e6


def quiet_disk(limit_us: float = 100.0, patience_s: float = 360.0) -> None:
    """Wait until creating a file costs at most `limit_us` (about 20 µs at rest on this disk, up to
    1000 µs after thousands of deletions), checking every 15 s; say what was measured."""
    started = time.perf_counter()
    cost = file_creation_us()
    while cost > limit_us and time.perf_counter() - started < patience_s:
        time.sleep(15)
        cost = file_creation_us()
    waited = time.perf_counter() - started
    print(f"disk: creating a file takes {cost:.0f} µs of kernel time" + (f" (after waiting {waited:.0f} s)" if waited > 1 else "")
          + ("" if cost <= limit_us else f", still above {limit_us:.0f} µs: the sweeps below pay for it"))


def learning_rates(count: int, low: float, high: float) -> str:
    return ",".join(f"{low + (high - low) * i / max(count - 1, 1):.4g}" for i in range(count))


def compare(name: str, job: list[str], sweep: list[str], target: float | None, repeats: int) -> None:
    one, many = (float("inf"), 0.0), (float("inf"), 0.0)
    for repeat in range(repeats):
        one = min(one, seconds(*job))
        many = min(many, seconds("-m", *job, *sweep, quiet=repeat > 0))
    ratio = many[0] / one[0]
    verdict = "for comparison" if target is None else f"target ≤ {target}x: {'met' if ratio <= target else 'NOT met'}"
    print(f"{name:<44} one run {one[0]:6.2f} s {one[1]:5.0f} MB   sweep {many[0]:6.2f} s {many[1]:5.0f} MB   "
          f"ratio {ratio:5.2f}x   ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--members", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--mlp-members", type=int, default=8)
    parser.add_argument("--basic", action="store_true", help="also time the 16-job sweep with the basic launcher")
    parser.add_argument("--repeats", type=int, default=2, help="alternate one run and the sweep this often; keep the best of each")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    inverse = [f"trainer.max_steps={args.steps}", f"trainer.accelerator={accelerator}"]
    population = ["hydra/launcher=population"]
    print(f"python {sys.version.split()[0]}, {args.steps} steps, accelerator {accelerator}")
    quiet_disk()
    for members in args.members:
        target = 1.5 if members <= 16 else 2.0 if members <= 256 else 4.0
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
