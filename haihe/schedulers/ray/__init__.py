"""The Ray backend: Ray Jobs over the dashboard's REST API, and the ``ray_train`` launcher (Ray Train DDP).

Nothing here imports ray at module import time; the launcher imports it on the compute side only.
"""
