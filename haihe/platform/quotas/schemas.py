"""The quotas API's bodies and answers (pydantic), shared by the router and the SDK.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from haihe.platform.api.schemas import Body
from haihe.platform.quotas import ledger as quotas


class QuotaSet(Body):
    gpu_hours: Annotated[float | None, Field(ge=0, le=quotas.ABSURD["gpu_hours"], allow_inf_nan=False)] = None
    cpu_hours: Annotated[float | None, Field(ge=0, le=quotas.ABSURD["cpu_hours"], allow_inf_nan=False)] = None
    storage_bytes: Annotated[int | None, Field(ge=0, le=quotas.ABSURD["storage_bytes"])] = None
    requests_per_month: Annotated[int | None, Field(ge=0, le=quotas.ABSURD["requests_per_month"])] = None
    max_jobs: Annotated[int | None, Field(ge=0, le=quotas.ABSURD["max_jobs"])] = None
    max_gpus: Annotated[int | None, Field(ge=0, le=quotas.ABSURD["max_gpus"])] = None
    period: Literal["monthly", "none"] | None = None
    warn_fraction: Annotated[float | None, Field(gt=0, le=1)] = None
