"""Drift: reference profiles of training data and the statistical tests on binned counts."""
