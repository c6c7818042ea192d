"""Live state: ``/v1/alerts``, ``/v1/status`` and ``/v1/stream`` (server-sent events)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["live"])
