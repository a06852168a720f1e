"""descend's population launcher, a Hydra plugin: `hydra/launcher=population` (see README)."""
