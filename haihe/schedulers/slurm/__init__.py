"""The Slurm backend: SlurmScheduler over a CLI or slurmrestd transport (build() in backend.py)."""
