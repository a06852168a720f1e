"""What descend's Optuna sweeper (hydra/sweeper=optuna) needs from Optuna, kept apart from Hydra's
plugin machinery: the search space from Hydra's override grammar, the study's storage, and how a
job's end is told to the study.

A diverged job, or one whose final loss is not a number, is told as COMPLETE with the worst value
(+inf when minimising, -inf when maximising): the sampler then learns that this region is bad (TPE
puts it among its worst trials) and stays below the edge of stability. A job that failed (a bad
config, a bug, a crash) says nothing about the objective: it is told as FAIL, which samplers ignore.
Either way the search goes on.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

# the study's own storage when hydra.sweeper.storage is null: Optuna's journal file in the sweep
# folder, which several processes may append to (file locks), so a resumed sweep finds its study
JOURNAL = "optuna_journal.log"
# Optuna's sampler keeps its random state in memory only: pickled here after each batch of asks, so a
# resumed search draws what the uninterrupted one would have drawn (Optuna's FAQ: "How can I save and
# resume studies?")
SAMPLER = "optuna_sampler.pkl"
# a password moved out of hydra.sweeper.storage (see mask_storage_override)
PASSWORD_ENV = "DESCEND_STORAGE_PASSWORD"


def search_space(arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Hydra overrides → ({key: Optuna distribution} for the swept keys, the fixed overrides as given).

    interval(a, b) is a float range, int(interval(a, b)) an integer one, tag(log, …) samples on a
    log scale; range(a, b[, step]) keeps Hydra's meaning (b excluded); choice(…) and a shuffled range
    are categorical."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(arguments):
        value = override.value()
        key = override.get_key_element()
        # a key given twice (the search's params, then the command line): the later one counts
        space.pop(key, None)
        fixed = [f for f in fixed if f.split("=", 1)[0] != override.input_line.split("=", 1)[0]]
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif isinstance(value, IntervalSweep):
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                space[key] = IntDistribution(value.start, value.end, log=log)
            else:
                space[key] = FloatDistribution(float(value.start), float(value.end), log=log)
        elif isinstance(value, RangeSweep) and not value.shuffle:
            values = list(override.sweep_iterator(transformer=Transformer.encode))
            if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
                space[key] = IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
            else:
                space[key] = FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
        elif isinstance(value, (ChoiceSweep, RangeSweep)):
            space[key] = CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        else:
            raise ValueError(f"{override.input_line}: an Optuna search takes interval(), range() or choice() here")
    return space, fixed


def trial_overrides(params: dict[str, Any], fixed: list[str]) -> list[str]:
    """A trial's job overrides: its sampled values, then the fixed ones (as the Hydra plugin wrote them)."""
    return [f"{key}={value}" for key, value in params.items()] + fixed


def open_storage(url: str | None, sweep_dir: Path) -> Any:
    """The study's storage: a database URL (RDBStorage: SQLite, PostgreSQL, MySQL, shared by several
    machines) or, without one, a journal file in the sweep folder."""
    import optuna

    if url:
        return database_storage(url)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))


def database_storage(url: str, attempts: int = 5) -> Any:
    """optuna.storages.RDBStorage(url), tried again when another process is creating the same new
    database at that moment: Optuna creates its tables and stamps their version on first use, and
    the second of two searches started at once on a new SQLite file fails there (IntegrityError on
    alembic_version) although the database is fine a moment later."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, OperationalError):
            time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url)  # the last try's error is the one reported


_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:)(?P<password>[^@/]*)(?P<tail>@.*)$")


def masked(url: str | None) -> str:
    """A URL as it may be shown: its password replaced by ***."""
    if not url:
        return str(url)
    match = _PASSWORD.match(url)
    return f"{match['head']}***{match['tail']}" if match else url


def mask_storage_override(argv: list[str], environ: dict[str, str]) -> list[str]:
    """`hydra.sweeper.storage=postgresql://user:secret@host/db` on the command line would land, password
    and all, in every job's .hydra/hydra.yaml and the sweep's multirun.yaml. The password moves to
    DESCEND_STORAGE_PASSWORD in this process's environment and the override reads it back with
    ${oc.env:…}, which Hydra records as written, unresolved. A resume needs the variable set again."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        match = _PASSWORD.match(value.strip("'\"")) if sep and key == "hydra.sweeper.storage" else None
        if match and not match["password"].startswith("${"):
            environ[PASSWORD_ENV] = match["password"]
            arg = f"{key}={match['head']}${{oc.env:{PASSWORD_ENV}}}{match['tail']}"
        out.append(arg)
    return out


def outcome(value: Any, status: str | None, direction: str) -> tuple[str, float | None]:
    """How a job's end is told to the study: ("COMPLETE", value) or ("FAIL", None), see the module's
    docstring; ("RUNNING", None) for a job stopped by a signal, which a resumed sweep continues;
    ("PRUNED", None) for a member a population's pruner stopped."""
    worst = math.inf if direction == "minimize" else -math.inf
    if status == "stopped":
        return "RUNNING", None
    if status == "pruned":  # a population's pruner stopped it (population/pruning.py): Optuna's own state for that
        return "PRUNED", None
    if status in ("failed", None):
        return "FAIL", None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "COMPLETE", worst
    return "COMPLETE", number if status == "completed" and math.isfinite(number) else worst
