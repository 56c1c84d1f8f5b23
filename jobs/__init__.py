"""Cohort-wide jobs on Daft (in process or on Ray) over the pinned lake; see jobs/run.py."""
