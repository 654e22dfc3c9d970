"""Root conftest: the session fixtures live in tests/fixtures/, one module per family of real services."""

pytest_plugins = [
    "tests.fixtures.services",  # S3 server, MLflow server, PostgreSQL (haihe.cluster)
    "tests.fixtures.ray",  # the local Ray head (haihe.cluster.ray_head)
    "tests.fixtures.slurm",  # the local Slurm cluster (haihe.cluster.slurm)
    "tests.fixtures.platform",  # the platform app, DB and users built on the above
    "tests.fixtures.figures",  # figures the reliability tests record for docs/reliability.md
]
