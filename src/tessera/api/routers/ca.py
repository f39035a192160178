"""Certificate authority: SVID issuance from a CSR, per-identity listing, the trust bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tessera.api.deps import (
    DbSession,
    ServicesDep,
    authenticated_claims,
    get_services,
    get_session,
    request_context,
)
from tessera.errors import AppError, Forbidden
from tessera.identity import ADMIN_ROLE

router = APIRouter(tags=["ca"])


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: str = Field(max_length=16 * 1024, description="PEM PKCS#10 request")
    identity: str | None = Field(None, max_length=128, description="default: the caller")
    ttl: int | None = Field(None, ge=60, le=7 * 86400,
                            description="seconds; at most the configured maximum (1 h by "
                                        "default), never past the identity's expiry nor the "
                                        "requesting token's")


class Caller(BaseModel):
    identity_id: str
    admin: bool
    token_expires_at: datetime


def authenticated_caller(request: Request,
                         session: Annotated[Session, Depends(get_session)]) -> Caller:
    """Any active identity with a fully checked access token (the one gate)."""
    claims = authenticated_claims(request, session)
    subject = str(claims["sub"])
    return Caller(identity_id=subject,
                  admin=get_services(request).identities.has_role(session, subject, ADMIN_ROLE),
                  token_expires_at=datetime.fromtimestamp(claims["exp"], UTC))


CallerDep = Annotated[Caller, Depends(authenticated_caller)]


@router.post("/v1/ca/certificates", status_code=201)
def issue(body: CertificateRequest, request: Request, session: DbSession,
          services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    target = body.identity or caller.identity_id
    if not caller.admin:
        own = services.identities.find(session, caller.identity_id)
        if target not in (caller.identity_id, own.name if own else None):
            raise Forbidden("an identity may only request its own certificate")
    try:
        issued = services.ca.issue(session, target, body.csr, actor=caller.identity_id,
                                   ttl=body.ttl, not_after_cap=caller.token_expires_at,
                                   ctx=request_context(request, caller.identity_id))
    except AppError:
        session.commit()  # keep the refusal's audit event
        raise
    bundle = services.ca.bundle_pem(session)
    session.commit()
    return {"serial": issued.serial, "identity_id": issued.identity_id,
            "spiffe_id": issued.spiffe_id, "certificate": issued.cert_pem,
            "chain": issued.chain_pem, "bundle": bundle, "x5t#S256": issued.thumbprint,
            "not_before": issued.not_before.isoformat(),
            "not_after": issued.not_after.isoformat()}


@router.get("/v1/ca/certificates")
def list_certificates(session: DbSession, services: ServicesDep, caller: CallerDep,
                      identity: Annotated[str | None, Query(max_length=128)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    target = identity or caller.identity_id
    row = services.identities.get(session, target)
    if not caller.admin and row.id != caller.identity_id:
        raise Forbidden("only an admin may list another identity's certificates")
    rows = services.ca.issued(session, row.id, limit)
    return {"items": [{"serial": r.serial, "identity_id": r.identity_id,
                       "spiffe_id": r.spiffe_id, "x5t#S256": r.thumbprint,
                       "issued_by": r.issued_by, "not_before": r.not_before.isoformat(),
                       "not_after": r.not_after.isoformat()} for r in rows],
            "next_cursor": None}


@router.get("/v1/ca/bundle")
def bundle(session: DbSession, services: ServicesDep) -> Response:
    return Response(services.ca.bundle_pem(session), media_type="application/pem-certificate-chain",
                    headers={"Cache-Control": "public, max-age=300"})


@router.get("/.well-known/spiffe-bundle")
def spiffe_bundle(session: DbSession, services: ServicesDep) -> JSONResponse:
    return JSONResponse(services.ca.spiffe_bundle(session),
                        headers={"Cache-Control": "public, max-age=300"})
