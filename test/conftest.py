"""Fixtures shared by every tier (helpers live in kvmtestlib)."""
from kvmtestlib import cluster_defaults, model_mod, seed_pillar  # noqa: F401  (fixtures)
