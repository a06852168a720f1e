"""Where a population sweep's job start goes: the CPU time per job of each phase from Hydra's
sweep to a member ready to train (issue 21), in one `python -m train -m` run in this process.

    python benchmarks/job_start.py [--members 256] [--steps 20] [overrides ...]

Each phase is a function of Hydra's or descend's wrapped with a time.thread_time() counter
(CPU time of the main thread: the machine is shared, wall clock drifts; the thread that writes
the jobs' .hydra/ files meanwhile is left out), printed in milliseconds per job; the nested
ones are part of the one above them. The whole command's CPU time is the process's. No target and no baseline: run it on two commits
and compare (a sweep's ratio to one run is benchmarks/sweep_speed.py's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

TOTALS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(owner: Any, name: str, label: str) -> None:
    """owner.name counted under `label` (inclusive of what it calls); nothing where owner has no
    such function (an older commit)."""
    original: Callable[..., Any] | None = getattr(owner, name, None)
    if original is None:
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            TOTALS[label] += time.thread_time() - started
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args, overrides = parser.parse_known_args()

    from hydra.plugins.sweeper import Sweeper

    from hydra.core.plugins import Plugins

    import descend.build as build
    import descend.cli as cli
    import descend.population.grouping as grouping
    from descend.population.members import Member

    # Hydra loads its plugins' modules anew (Plugins._scan_all_plugins): the launcher's are wrapped
    # once Hydra has made the launcher
    launcher_phases = [
        ("job_config_of", "launcher: job config"),
        ("job_config", "launcher: job config without hydra"),
        ("alike_jobs", "launcher: alike_jobs (for plan)"),
        ("start_job", "start_job"),
        ("save_configs", "  save_configs"),
        ("use_hydra_config", "  use_hydra_config"),
    ]
    phases = [  # (owner, attribute, label), outermost first
        (Sweeper, "validate_batch_is_legal", "sweeper's check (composes each job)"),
        (grouping, "plan", "grouping.plan"),
        (Member, "__init__", "  Member.__init__"),
        (Member, "build", "Member.build"),
        (build, "validate", "  validate"),
        (build, "build_task", "  build_task"),
        (Member, "sessions", "  sessions"),
    ]
    for owner, name, label in phases:
        timed(owner, name, label)
    instantiate_launcher = Plugins.instantiate_launcher

    def instantiate_and_time(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = instantiate_launcher(self, *args, **kwargs)
        module = sys.modules[type(made).__module__]
        for name, label in launcher_phases:
            timed(type(made) if hasattr(type(made), name) else module, name, label)
        return made

    Plugins.instantiate_launcher = instantiate_and_time  # type: ignore[method-assign]

    rates = ",".join(f"{0.01 + 0.45 * i / max(args.members - 1, 1):.6f}" for i in range(args.members))
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        sys.argv = ["train", "-m", "hydra/launcher=population", f"optimizer.lr={rates}", f"trainer.max_steps={args.steps}",
                    "trainer.enable_progress_bar=false", "hydra.hydra_logging.root.level=WARNING", *overrides]
        started = time.process_time()
        try:
            cli.main()
        except SystemExit as stop:
            if stop.code:
                raise
        whole = time.process_time() - started
    print(f"{args.members} members, {args.steps} steps: whole command {whole:.2f} s CPU")
    labels = [phases[0][2], *(label for _, label in launcher_phases[:3]), phases[1][2], launcher_phases[3][1],
              *(label for _, label in launcher_phases[4:]), *(label for _, _, label in phases[2:])]
    for label in labels:
        print(f"{label:<40} {1000 * TOTALS[label] / args.members:7.3f} ms a job ({CALLS[label]} calls)")


if __name__ == "__main__":
    main()
