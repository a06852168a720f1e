"""Reading a checkpoint safely, with one line that names the file and what is wrong with it.

Lightning's checkpoints hold tensors, numbers, strings and plain containers, which torch's
`weights_only` loader reads without running code from the file. A file that needs more (pickled
objects of other libraries, e.g. an OmegaConf config), a truncated one or something that is no
checkpoint at all is refused here, before a run starts from it or writes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from descend.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be read safely, or at all."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at `path` as torch's weights_only loader reads it (tensors on the CPU).
    `key`: how the user named it, `ckpt_path` or `resume=<folder>`.

    Raises CheckpointError naming `key`, the file and the cause: missing, unreadable (OSError),
    holding objects weights_only refuses, truncated or not a torch file, or without a global_step."""
    import pickle

    import torch

    path = Path(path)
    where = f"{key}={path}" if "=" not in key else f"{key}: {path}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file; point {key} at a Lightning checkpoint (checkpoints/last.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object: name it, not torch's advice
        refused = str(error).split("Unsupported global:")[-1].split("which")[0].strip(" .") if "Unsupported global" in str(error) else ""
        what = f" ({refused})" if refused else ""
        raise CheckpointError(f"{where}: holds objects that cannot be loaded safely{what}; only a checkpoint of "
                              "tensors, numbers and strings (as descend and Lightning write) can be resumed from") from None
    except PermissionError as error:
        raise CheckpointError(f"{where}: cannot be read ({error.strerror or error}); check the file's permissions") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:  # torch's zip reader: EINVAL or a RuntimeError
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{where}: not a readable checkpoint (truncated or not a torch file: {first}); "
                              "resume from an intact one, e.g. a copy, or start the run again") from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise CheckpointError(f"{where}: not a Lightning checkpoint (no global_step); point {key} at checkpoints/last.ckpt of a run")
    return checkpoint


def checkpoint_step(path: str | Path | None, key: str = "ckpt_path") -> int | None:
    """The global step a checkpoint was saved at (None without a path); CheckpointError if unreadable."""
    if not path:
        return None
    return int(read_checkpoint(path, key)["global_step"])
