"""The model zoo on the platform: the catalogue a caller may see (catalog), lineage and registration of a job's model
(service), the public models seeded at start-up, and the router. The library is haihe.model_zoo.
"""
