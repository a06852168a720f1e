"""Population sweeps: many jobs of a sweep trained as one vectorised run (README, "Population sweeps")."""
