"""What a user gets from an install, and the README's promise about adding a task."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import QUIET, metrics, only_run, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_carries_the_configs_and_trains_from_any_folder(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("descend-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("train.py", "descend/cli.py", "descend/conf/train.yaml", "descend/conf/task/inverse.yaml", "descend/conf/hydra/default.yaml",
                 "hydra_plugins/descend_population_launcher/population_launcher.py",
                 "hydra_plugins/descend_optuna_sweeper/optuna_sweeper.py", "hydra_plugins/descend_basic_sweeper/basic_sweeper.py"):
        assert path in names, path
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)], check=True, timeout=600)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import descend.cli as c; print(c.__file__); print(c.config_dir())"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "descend" / "conf")
    proc = subprocess.run([sys.executable, "-m", "train", "trainer.max_steps=5", *QUIET], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics(only_run(workdir))["status"] == "completed"


def test_the_readme_recipe_for_a_new_task_works_as_written(tmp_path):
    section = (ROOT / "README.md").read_text().split("## Adding a task", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    # a name no shipped task has: followed literally, the recipe adds a task rather than replacing one
    assert "# src/descend/tasks/myquadratic.py" in code and "# conf/task/myquadratic.yaml" in yaml
    assert not (ROOT / "conf" / "task" / "myquadratic.yaml").exists() and not (ROOT / "src/descend/tasks/myquadratic.py").exists()
    # the module under its own name on PYTHONPATH, the YAML in an extra config folder: nothing else
    (tmp_path / "myquadratic.py").write_text(code)
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "myquadratic.yaml").write_text(yaml.replace("descend.tasks.myquadratic.", "myquadratic."))
    os.environ["PYTHONPATH"] = str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        run_cli("task=myquadratic", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "trainer.max_steps=300", *QUIET, cwd=tmp_path)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    record = metrics(only_run(tmp_path))
    assert record["status"] == "completed" and record["metrics"]["ref/rel_error"] < 1e-3, record
    assert abs(record["metrics"]["ref/excess_loss"]) < 1e-5
