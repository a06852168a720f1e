"""Helpers for real CLI runs and for reading what they leave behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_cli(*overrides: str, cwd: Path, expect: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m train <overrides>` in `cwd`, as a user runs it; asserts the exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "train", *overrides], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs" / "runs").glob("*/*"))


def only_run(cwd: Path) -> Path:
    dirs = run_dirs(cwd)
    assert len(dirs) == 1, dirs
    return dirs[0]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series of a run, read back with TensorBoard's own reader: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series of a run by its metric's name, as metrics.json and other loggers name
    it (train/loss, which TensorBoard shows under descent/): {name: {step: value}}."""
    from descend.tags import metric_name

    return {metric_name(tag): series for tag, series in tensorboard_scalars(run_dir).items()}


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The run's error: exactly one `error:` line on stderr and no traceback anywhere."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# ---- the fast subset: `pytest -m "not slow"` runs what needs no new process ----
STARTS_A_PROCESS = {"run_cli", "subprocess", "Popen", "kill_and_resume", "signal_after_checkpoint"}


def _names(code) -> set[str]:
    """The global and attribute names a function uses, its comprehensions' and inner functions' too."""
    inner = [c for c in code.co_consts if hasattr(c, "co_names")]
    return set(code.co_names).union(*map(_names, inner))


def _starts_a_process(function, seen: set | None = None) -> bool:
    """Whether the function starts a process, itself or through a helper of its module."""
    code = getattr(function, "__code__", None)
    seen = set() if seen is None else seen
    if code is None or code in seen:
        return False
    seen.add(code)
    names = _names(code)
    if STARTS_A_PROCESS & names:
        return True
    helpers = [function.__globals__.get(name) for name in names]
    return any(callable(h) and _starts_a_process(h, seen) for h in helpers if getattr(h, "__module__", None) == function.__module__)


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that runs the CLI or another process, itself or through a fixture:
    those take seconds each; the rest (units and in-process checks) run in well under a minute."""
    for item in items:
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_starts_a_process(f) for f in [getattr(item, "function", None), *fixtures]):
            item.add_marker(pytest.mark.slow)
