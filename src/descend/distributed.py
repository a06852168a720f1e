"""What data-parallel training needs from descend's side of Lightning's DDP launcher."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig


@contextmanager
def ddp_children_join_this_job(hydra_cfg: DictConfig) -> Iterator[None]:
    """Lightning starts DDP ranks 1.. by re-running this command line with `hydra.run.dir` set to
    HydraConfig's run.dir. In a multirun that would re-run the whole sweep in a new run folder;
    while this job trains, the command line is this job's overrides and run.dir its folder.
    Lightning also leaves LOCAL_RANK and friends in this process's environment, after which the
    next job would wait for ranks that an outside launcher was meant to start: they are restored."""
    import os

    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")}
    saved_argv, saved_dir = sys.argv[:], hydra_cfg.run.dir
    # hparams_search would turn the child into a sweep again; its sampled values are in the overrides
    sys.argv[1:] = [o for o in hydra_cfg.overrides.task if not o.startswith("hparams_search=")]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv[:] = saved_argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = saved_dir


def close_process_group() -> None:
    """End the job's data-parallel process group: Lightning reuses an open one, and in a multirun
    the next job's new ranks could not join the old group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launched_rank() -> int:
    """This process's rank under an outside launcher (torchrun sets RANK), before Lightning knows it."""
    import os

    return int(os.environ.get("RANK", "0"))
