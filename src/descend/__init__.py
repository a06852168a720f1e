"""descend: gradient-descent experiments as Lightning runs, configured by Hydra.

Kept import-light on purpose: torch and lightning load where they are used,
so `import descend` and `python -m train --help` stay fast.
"""

__version__ = "0.1.0"

# The Python API (descend/api.py), imported on first use: `import descend` loads neither torch nor Hydra.
__all__ = ["DescendError", "Run", "load", "runs", "sweep", "train"]


def __getattr__(name: str):
    if name in __all__:
        from descend import api

        return getattr(api, name)
    raise AttributeError(f"module 'descend' has no attribute {name!r}")
