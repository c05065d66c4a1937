"""Solvers: choose per-layer, per-timestep bit-widths under budgets."""
