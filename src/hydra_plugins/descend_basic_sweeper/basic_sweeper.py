"""Hydra's BasicSweeper (every combination of the swept values, in batches) with one change: in a
resumed sweep (`python -m train -m resume=<sweep folder>`) its launcher skips the jobs that finished
and continues the rest in their folders (descend.resume_sweep). It is stored as hydra/sweeper=basic,
Hydra's default, after Hydra's own entry (imported here first), so every sweep uses it."""

from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as HydraBasicSweeper
from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf as HydraBasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class BasicSweeperConf(HydraBasicSweeperConf):
    _target_: str = "hydra_plugins.descend_basic_sweeper.basic_sweeper.BasicSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=BasicSweeperConf, provider="descend")


class BasicSweeper(HydraBasicSweeper):
    def setup(self, **kwargs: Any) -> None:
        from descend.resume_sweep import setup_sweeper

        super().setup(**kwargs)
        setup_sweeper(self)
