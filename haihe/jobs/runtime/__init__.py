"""The job runtime that runs ON compute nodes (``python -m haihe.jobs.runtime``).

``contract`` (the environment variables and exit codes shared with the platform) is light to import; everything
else (torch, MLflow, minio) is imported lazily by the step that needs it. Never imports ``haihe.platform``.
"""

from haihe.jobs.runtime.contract import EXIT_REASONS, ExitCode, RuntimeEnv, describe_exit

__all__ = ["EXIT_REASONS", "ExitCode", "RuntimeEnv", "describe_exit"]
