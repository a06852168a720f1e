"""One process per run folder: `descend.lock` in the folder names the process that trains there.

A second `resume=` of a run that is still running, or a second command given the same
`hydra.run.dir`, would interleave two runs' checkpoints, event files and records. The process that
trains a run holds the lock file (JSON: pid, host, the process's start time, command, when); a
command that finds it held by a live process is refused in one line naming that process, before
Hydra writes anything (prechecks.checked_argv), and again when the job starts (a race between two).

A lock whose process is gone is stale and is taken over with a word: on this host, when its pid is
not running (or now belongs to a later process: the start time differs); from another host, which
cannot be asked, when its holder stopped refreshing it (the holder touches the file every
HEARTBEAT_S seconds; STALE_S without a touch means it is gone, e.g. a preempted SLURM node).
Only rank 0 of a data-parallel run holds it (the other ranks are rank 0's helpers).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from descend.errors import exit_with_error

LOCK = "descend.lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0


# the command as the user typed it (cli.main sets it before descend rewrites sys.argv for Hydra:
# resume= becomes hydra.run.dir=, ckpt_path= and the run's own overrides)
TYPED_ARGV: list[str] = list(sys.argv[1:])

def rank_zero() -> bool:
    """Not one of the helper ranks of a data-parallel run (Lightning's LOCAL_RANK, torchrun's RANK)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def start_time(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc; None elsewhere or if gone):
    a pid reused by a later process has another start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def holder(folder: Path) -> dict[str, Any] | None:
    """The lock's record, or None where there is none (or an unreadable one: half written, or not ours)."""
    try:
        info = json.loads((folder / LOCK).read_text())
        info["age_s"] = time.time() - (folder / LOCK).stat().st_mtime
        return info if isinstance(info.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def alive(info: dict[str, Any]) -> bool:
    """Whether the lock's process may still be training."""
    if info.get("host") != socket.gethostname():
        return info["age_s"] < STALE_S
    if not running(info["pid"]):
        return False
    started = start_time(info["pid"])
    return started is None or info.get("started") in (None, started)


def ours(info: dict[str, Any]) -> bool:
    return info.get("host") == socket.gethostname() and info["pid"] == os.getpid()


def describe(info: dict[str, Any]) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info['pid']} on host {info.get('host', '?')} ({info.get('command', '?')}, since {since})"


def check_free(folder: Path, key: str) -> None:
    """Refuse the command (one line, exit 2) if another live process trains in `folder`."""
    info = holder(folder) if rank_zero() else None
    if info and not ours(info) and alive(info):
        exit_with_error(f"{key}: the run folder is in use by {describe(info)}; wait for it to end or stop it (kill "
                        f"{info['pid']} on {info.get('host', '?')}); if it is gone, delete {folder / LOCK}")


@contextmanager
def held(folder: Path, key: str = "the run") -> Iterator[None]:
    """Hold `folder`'s lock while the body trains there (rank 0 only); a stale one is taken over
    with a line on the console. Refuses (RefusedCommand) if a live process holds it."""
    if not rank_zero():
        yield
        return
    path = folder / LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": start_time(os.getpid()),
              "command": " ".join(["python -m train", *TYPED_ARGV])[:300], "since": time.time()}
    while True:
        try:
            with open(path, "x") as handle:  # O_EXCL: of two processes starting at once, one wins
                json.dump(record, handle)
            break
        except FileExistsError:
            info = holder(folder)
            if info and ours(info):
                break
            check_free(folder, key)
            if info:
                print(f"descend: {path} was left by {describe(info)}, which is no longer running; taking it over")
            path.unlink(missing_ok=True)
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat, args=(path, stop), daemon=True, name="descend-lock")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        info = holder(folder)
        if info and ours(info):
            path.unlink(missing_ok=True)


def heartbeat(path: Path, stop: threading.Event) -> None:
    """Touch the lock every HEARTBEAT_S seconds: a process on another host sees it is alive."""
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:  # removed (a failed resume restores its folder) or the disk went away
            return
