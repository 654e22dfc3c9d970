"""Haihe: AI supercomputing as a service on Slurm and Ray."""

__version__ = "0.1.0"
