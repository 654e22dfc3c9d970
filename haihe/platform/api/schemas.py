"""What every area's API schemas build on: request bodies, answers read from rows, and the error body.

Request bodies forbid unknown fields, so a typo is a 422 naming the field instead of a silent default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

Name = Annotated[str, StringConstraints(min_length=1, max_length=63)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
RoleName = Literal["org_admin", "researcher", "service_account"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: dict[str, object] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
