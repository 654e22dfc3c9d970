"""Local bring-up of the services Haihe runs on: the S3 server, MLflow, a Ray head, PostgreSQL (tests) and a
Slurm cluster rendered from an NSCC-style description. Used by ``haihe up``, ``haihe cluster`` and the tests.
"""
