"""Synthetic head-CT cohorts with labelled haemorrhages: the data for tests, demos and training here."""
from ichdet.synth.cohort import make_cohort
from ichdet.synth.scan import generate_scan

__all__ = ["generate_scan", "make_cohort"]
