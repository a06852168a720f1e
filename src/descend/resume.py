"""`python -m train resume=<run folder>`: continue a run in its own folder, with its own config
(a sweep's folder: resume_sweep.py)."""

from __future__ import annotations

from pathlib import Path

from descend.errors import exit_with_error


def resume_overrides(argv: list[str]) -> list[str]:
    """Turn `resume=<folder>` into the run's original overrides plus its folder and last checkpoint."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    folder = Path(unquoted(resume[-1].split("=", 1)[1])).expanduser()
    from descend.resume_sweep import is_sweep_folder, sweep_resume_overrides

    if is_sweep_folder(folder):  # a sweep's folder: the whole sweep continues (resume_sweep.py)
        return sweep_resume_overrides(folder, [a for a in argv if not a.startswith("resume=")])
    saved = folder / ".hydra" / "overrides.yaml"
    checkpoint = folder / "checkpoints" / "last.ckpt"
    for path, what in ((saved, "its saved config"), (checkpoint, "a checkpoint to resume from")):
        if not path.is_file():
            exit_with_error(f"resume={folder}: {path} not found; point resume= at a run folder with {what}, "
                            "or at a sweep's folder (with its multirun.yaml)")
    import yaml

    original = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.startswith(("resume=", "ckpt_path="))]
    rest = [a for a in argv if not a.startswith("resume=")]
    folder = folder.resolve()
    return [*original, *rest, f"hydra.run.dir={quoted(folder)}", f"ckpt_path={quoted(checkpoint.resolve())}", f"resume={quoted(folder)}"]


def unquoted(value: str) -> str:
    """A resume= value as given, or as quoted() wrote it (DDP ranks re-run the rewritten command)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1].replace("\\'", "'")
    return value


def quoted(path: Path) -> str:
    """A path as one Hydra override value: a sweep job's folder has '=' in its name (00_optimizer.lr=0.1)."""
    return "'" + str(path).replace("'", "\\'") + "'"
