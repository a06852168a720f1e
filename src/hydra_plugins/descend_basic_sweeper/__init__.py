"""Hydra's basic sweeper, resumable: `hydra/sweeper=basic` (conf/hydra/sweeper/basic.yaml)."""
