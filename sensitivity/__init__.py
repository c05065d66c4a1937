"""Sensitivity estimators: per (layer, timestep group, bit-width) predicted degradation.

    from sensitivity import get_estimator, validate
    scores = get_estimator("gradient", seed=0).estimate(workload, None, ["W4A16", "W8A16"], 3)
    report = validate(scores, workload)       # rank correlation with measured degradation (held out)
"""

from sensitivity.base import (
    Estimator,
    EstimatorError,
    estimator_names,
    estimator_options,
    get_estimator,
    register,
)
from sensitivity.decoupled import DecoupledEstimator
from sensitivity.gradient import GradientEstimator
from sensitivity.hessian import HessianEstimator
from sensitivity.kurtosis import KurtosisEstimator
from sensitivity.mse import MSEEstimator
from sensitivity.naive import NaiveEstimator
from sensitivity.validate import Measurements, Validation, correlate, measure, validate

__all__ = [
    "DecoupledEstimator", "Estimator", "EstimatorError", "GradientEstimator", "HessianEstimator",
    "KurtosisEstimator", "MSEEstimator", "Measurements", "NaiveEstimator", "Validation", "correlate", "estimator_names",
    "estimator_options", "get_estimator", "measure", "register", "validate",
]
