"""Datasets on the platform: the service (versions, uploads, shares, access), their rows, the job-scoped storage
credentials broker, and their routers. The storage library itself is haihe.datasets.
"""
