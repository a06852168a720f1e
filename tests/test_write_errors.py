"""An OS error while writing (disk full, no permission, read-only) is one line naming the file and the fix."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from conftest import QUIET, metrics, one_line_error


def run_in_process(monkeypatch, capsys, *overrides: str) -> tuple[int, str]:
    """`python -m train <overrides>` in this process: its exit code and stderr."""
    from descend.cli import main

    monkeypatch.setattr(sys, "argv", ["train", *overrides])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def test_a_full_disk_while_saving_the_solution_is_one_line_and_keeps_checkpoint_and_record(tmp_path, monkeypatch, capsys):
    import os

    replace = os.replace

    def full(source, target):  # the solution's bytes are written; the disk fills before the rename
        if str(target).endswith("solution.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    run = tmp_path / "run"
    code, stderr = run_in_process(monkeypatch, capsys, f"hydra.run.dir={run}", "trainer.max_steps=30", *QUIET)
    assert code == 2 and "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert f"cannot write {run / 'solution.pt'}: No space left on device; free space on that disk" in line
    assert not list(run.rglob("*.partial"))
    # the record where it still fits: metrics.json says what happened; the last checkpoint is kept
    assert metrics(run)["status"] == "completed" and "No space left" in metrics(run)["error"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and "resume=" in line


def mounted_tmpfs(path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_disk_that_fills_during_training_is_one_line_naming_the_file(tmp_path):
    disk = tmp_path / "disk"
    if not mounted_tmpfs(disk, "96k"):
        pytest.skip("mounting a small tmpfs needs root; the in-process test covers the message")
    try:
        proc = subprocess.run([sys.executable, "-m", "train", f"hydra.run.dir={disk / 'run'}", "trainer.max_steps=20000",
                               "trainer.log_every_n_steps=1", *QUIET], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 2
        line = one_line_error(proc)
        assert f"cannot write {disk / 'run'}/" in line and "No space left on device; free space on that disk" in line
        assert not list(disk.rglob("*.partial"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_at_a_population_members_solution_is_its_own_one_line_error(tmp_path, monkeypatch, capsys):
    """A population writes its members' results from writer threads (results.writes_in_background):
    a file that cannot be written is still its member's error, in one line naming the file, in its
    metrics.json, with no partial file left; the other members' results are whole."""
    import os

    replace = os.replace

    def full(source, target):
        if str(target).endswith("solution.pt") and "lr=0.2" in str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    sweep = tmp_path / "sweep"
    code, stderr = run_in_process(monkeypatch, capsys, "-m", "hydra/launcher=population", f"hydra.sweep.dir={sweep}",
                                  "optimizer.lr=0.1,0.2,0.3", "trainer.max_steps=30", *QUIET)
    assert "Traceback" not in stderr  # (its status stays a single run's: completed, with the error)
    assert code == 1  # the sweep says a job's results are not whole, as for a failed job
    failed, *others = [d for d in sorted(sweep.iterdir()) if d.is_dir() and "lr=0.2" in d.name] + \
                      [d for d in sorted(sweep.iterdir()) if d.is_dir() and "lr=0.2" not in d.name]
    (line,) = [x for x in stderr.splitlines() if x.startswith("error: cannot write")]
    assert f"cannot write {failed / 'solution.pt'}: No space left on device; free space on that disk" in line
    assert "No space left" in metrics(failed)["error"] and not (failed / "solution.pt").exists()
    assert not list(sweep.rglob("*.partial"))
    assert len(others) == 2
    for job in others:
        assert metrics(job)["status"] == "completed" and metrics(job)["error"] is None
        assert (job / "solution.pt").is_file() and (job / "solution.npz").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
