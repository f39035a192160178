"""Management API for Tessera's own signing keys: list and rotate (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict

from tessera.api.deps import AdminSubject, DbSession, ServicesDep, request_context

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: bool = False  # activate at once instead of after the pre-publication delay


@router.get("")
def list_keys(session: DbSession, services: ServicesDep,
              _admin: AdminSubject) -> dict[str, Any]:
    return {"items": services.key_rotation.list(session), "next_cursor": None}


@router.post("/rotate")
def rotate(request: Request, session: DbSession, services: ServicesDep, admin: AdminSubject,
           body: Annotated[RotateRequest | None, Body()] = None) -> dict[str, Any]:
    result = services.key_rotation.rotate(session, now=bool(body and body.now), actor=admin,
                                          ctx=request_context(request, admin))
    session.commit()
    services.keys.invalidate()
    return result
