"""Evaluation of what the serving system did: drift against the fit-time baselines."""

from drivetrain.evaluate._drift import DRIFT_COLUMNS, DriftReport, measure_drift

__all__ = ["DRIFT_COLUMNS", "DriftReport", "measure_drift"]
