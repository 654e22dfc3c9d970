"""One port plan for every local service, derived from a single base port.

``haihe up`` uses base 20000 by default (the API stays on 8000); each test session picks its own base
(``HAIHE_TEST_PORT_BASE``) so that several stacks can run side by side on one host without colliding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PortPlan:
    base: int = 20000

    @property
    def s3(self) -> int:
        return self.base

    @property
    def mlflow(self) -> int:
        return self.base + 1

    @property
    def postgres(self) -> int:
        return self.base + 2

    @property
    def api(self) -> int:
        return self.base + 10

    @property
    def serve_http(self) -> int:
        """Ray Serve's HTTP proxy (used by the gateway benchmark as the direct baseline)."""
        return self.base + 11

    def ray(self, offset: int) -> int:
        """Ray needs ~a dozen fixed ports plus a worker range: base+100 .. base+199."""
        if not 0 <= offset < 100:
            raise ValueError("ray port offset out of range")
        return self.base + 100 + offset

    def slurm(self, offset: int) -> int:
        """slurmctld, slurmd nodes, slurmdbd, MariaDB, slurmrestd, srun ports: base+200 .. base+299."""
        if not 0 <= offset < 100:
            raise ValueError("slurm port offset out of range")
        return self.base + 200 + offset
