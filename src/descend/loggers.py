"""Loggers that follow a resume as TensorBoard's purge_step does: the rows before the checkpoint's
step are kept, the stretch a killed run logged after it is dropped, and the resumed session continues."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, continuing a resumed run's metrics.csv. Lightning's writer deletes an
    existing file when it starts; with `purge_step` (the checkpoint's step, set by descend's build
    on a resume) the rows logged before that step are read first and written back ahead of the
    new ones."""

    def __init__(self, *args: Any, purge_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.purge_step = purge_step

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        kept = rows_before(Path(self.log_dir) / "metrics.csv", self.purge_step) if self.purge_step else []
        experiment = super().experiment
        if kept and hasattr(experiment, "metrics"):  # rank 0's writer (other ranks get a stand-in)
            experiment.metrics[:0] = kept
            experiment.save()
        return experiment


def rows_before(path: Path, step: int | None) -> list[dict[str, float]]:
    """The rows of a CSVLogger file logged before `step`, with their values as numbers (empty cells left out)."""
    if step is None or not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    for row in rows:
        values = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
        if "step" in values and values["step"] < step:
            values["step"] = int(values["step"])
            kept.append(values)
    return kept
