"""Sensitivity estimators: per (layer, timestep group, bit-width) predicted degradation."""
