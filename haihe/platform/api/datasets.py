"""Routes: datasets and their versions (written by the datasets service)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["datasets"])
