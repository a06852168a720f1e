"""descend's Optuna sweeper, a Hydra plugin: `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml)."""
