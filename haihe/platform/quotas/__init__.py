"""Quotas and the ledger: the QuotaGate seam, the ledger (reserve, settle, reports), the limits pushed into Slurm's own
accounting, and the router.
"""
