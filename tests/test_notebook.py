"""experiments/notebook/descend_in_a_notebook.ipynb, executed end to end in a real Jupyter kernel."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "notebook" / "descend_in_a_notebook.ipynb"


def text_of(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


def test_the_notebook_runs_and_says_what_the_seeds_say(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, notebook)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    outputs = [text_of(c) for c in code]

    assert "completed, steps=100" in outputs[1]
    errors = [float(x) for x in re.findall(r"= ([0-9.e+-]+)", outputs[2])]
    assert len(errors) == 2 and max(errors) < 1e-2  # W·M ≈ I after 100 steps at lr 0.46
    assert any("image/png" in o.get("data", {}) for o in code[3].outputs)  # the sweep's curves, inline
    best = re.search(r"best lr: ([0-9.]+)", outputs[4])
    assert best and float(best.group(1)) == 0.9  # the lr nearest lr_optimal ≈ 0.94
    w, prediction = (float(x) for x in re.findall(r"= ([0-9.]+)", outputs[5]))
    assert abs(w - 2) < 0.05 and abs(prediction - 10) < 0.25
    assert len(list((tmp_path / "outputs" / "runs").glob("*/*"))) == 2  # the kernel wrote beside the notebook
