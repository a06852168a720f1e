"""What a run leaves behind besides TensorBoard and checkpoints: metrics.json and the solution.

    metrics.json   {"status": completed|diverged|failed, "task", "steps", "wall_time_s",
                    "metrics": {...}, "error": one line or null, "traceback": text or null}
    solution.pt    dict of tensors: torch.load(path, weights_only=True)
    solution.npz   the same arrays: numpy.load(path)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

STATUSES = ("completed", "diverged", "failed")


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN or Infinity; a diverged loss is written as null
    return value if math.isfinite(value) else None


def write_metrics(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write metrics.json atomically (a kill mid-write leaves the previous file intact)."""
    assert record["status"] in STATUSES
    record = dict(record, metrics={k: _finite_or_none(float(v)) for k, v in record.get("metrics", {}).items()})
    path = run_dir / "metrics.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def write_solution(run_dir: Path, tensors: dict[str, Any]) -> None:
    import numpy as np
    import torch

    cpu = {name: t.detach().cpu() for name, t in tensors.items()}
    torch.save(cpu, run_dir / "solution.pt")
    np.savez(run_dir / "solution.npz", **{name: t.double().numpy() for name, t in cpu.items()})


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
