"""Schedulers: the Scheduler protocol, a registry by URL, and the Slurm and Ray backends.

Backends know nothing of the database or the web; they take a neutral ``Launch`` and return refs.
"""
