"""descend: gradient-descent experiments as Lightning runs, configured by Hydra.

Kept import-light on purpose: torch and lightning load where they are used,
so `import descend` and `python -m train --help` stay fast.
"""

__version__ = "0.1.0"
