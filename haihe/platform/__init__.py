"""The service: settings, database, identity and tenancy, quotas and ledger, job/dataset/zoo/endpoint
services, reconciler, inference gateway, REST API, audit and metrics.
"""
