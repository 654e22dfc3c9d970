"""Tracking for jobs and people: the MLflow proxy (job tokens, per-org filtering of REST and GraphQL) and its router.
"""
