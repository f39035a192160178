"""Management API of the decision point: policies, the resource catalog, imported entities and
the snapshot export for in-process PEPs (problem+json errors)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tessera.api.deps import AdminSubject, DbSession, PDPCaller, ServicesDep, request_context
from tessera.authz.service import DEFAULT_SET

router = APIRouter(tags=["authz"])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceCreate(_Strict):
    type: str = Field(max_length=128, description="Dataset, Tool, Api, Model or a Cedar name")
    id: str = Field(min_length=1, max_length=256)
    attributes: dict[str, Any] = Field(default_factory=dict)
    parents: list[dict[str, str]] = Field(default_factory=list, max_length=100)


class EntitiesImport(_Strict):
    entities: list[dict[str, Any]] = Field(max_length=1000)


class PolicyPush(_Strict):
    files: dict[str, str] = Field(description="file name (*.cedar) -> Cedar text")
    schema_fragment: str | None = Field(None, max_length=65536)
    message: str = Field("", max_length=1000)
    activate: bool = True


class Activate(_Strict):
    version: int = Field(ge=1)


SetName = Annotated[str, Query(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]


# -- resource catalog ------------------------------------------------------------------------

@router.post("/v1/resources", status_code=201)
def put_resource(body: ResourceCreate, request: Request, session: DbSession,
                 services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    row = services.authz.put_entity(
        session, "catalog", {"uid": {"type": body.type, "id": body.id},
                             "attrs": body.attributes, "parents": body.parents},
        actor=admin, ctx=request_context(request, admin))
    session.commit()
    return services.authz.entity_read(row)


@router.get("/v1/resources")
def list_resources(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                   type: Annotated[str | None, Query(max_length=128)] = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50,
                   cursor: Annotated[str | None, Query(max_length=400)] = None) -> dict[str, Any]:
    rows, nxt = services.authz.list_entities(session, "catalog", type, limit, cursor)
    return {"items": [services.authz.entity_read(r) for r in rows], "next_cursor": nxt}


@router.get("/v1/resources/{type}/{eid}")
def get_resource(type: str, eid: str, session: DbSession, services: ServicesDep,
                 _admin: AdminSubject) -> dict[str, Any]:
    return services.authz.entity_read(services.authz.get_entity(session, "catalog", type, eid))


@router.delete("/v1/resources/{type}/{eid}", status_code=204)
def delete_resource(type: str, eid: str, request: Request, session: DbSession,
                    services: ServicesDep, admin: AdminSubject) -> None:
    services.authz.delete_entity(session, "catalog", type, eid, actor=admin,
                                 ctx=request_context(request, admin))
    session.commit()


# -- imported entities -----------------------------------------------------------------------

@router.post("/v1/entities")
def import_entities(body: EntitiesImport, request: Request, session: DbSession,
                    services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    ctx = request_context(request, admin)
    rows = [services.authz.put_entity(session, "import", e, actor=admin, ctx=ctx)
            for e in body.entities]
    session.commit()
    return {"imported": len(rows)}


@router.get("/v1/entities")
def list_entities(session: DbSession, services: ServicesDep, _admin: AdminSubject,
                  type: Annotated[str | None, Query(max_length=128)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  cursor: Annotated[str | None, Query(max_length=400)] = None) -> dict[str, Any]:
    rows, nxt = services.authz.list_entities(session, "import", type, limit, cursor)
    return {"items": [services.authz.entity_read(r) for r in rows], "next_cursor": nxt}


@router.delete("/v1/entities/{type}/{eid}", status_code=204)
def delete_entity(type: str, eid: str, request: Request, session: DbSession,
                  services: ServicesDep, admin: AdminSubject) -> None:
    services.authz.delete_entity(session, "import", type, eid, actor=admin,
                                 ctx=request_context(request, admin))
    session.commit()


# -- policies --------------------------------------------------------------------------------

@router.post("/v1/policies/{policy_set}", status_code=201)
def push(policy_set: str, body: PolicyPush, request: Request, session: DbSession,
         services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    result = services.authz.push(session, policy_set, body.files,
                                 schema_fragment=body.schema_fragment, author=admin,
                                 message=body.message, activate=body.activate,
                                 ctx=request_context(request, admin))
    session.commit()
    return {"policy_set": policy_set, "version": result.version, "active": result.active,
            "digest": result.digest, "policies": result.policies}


@router.post("/v1/policies/{policy_set}/validate")
def validate(policy_set: str, body: PolicyPush, session: DbSession, services: ServicesDep,
             _admin: AdminSubject) -> dict[str, Any]:
    parsed = services.authz.check(session, body.files, body.schema_fragment)
    return {"policy_set": policy_set, "valid": True,
            "policies": [p.id for p in parsed.policies]}


@router.get("/v1/policies/{policy_set}/versions")
def versions(policy_set: str, session: DbSession, services: ServicesDep,
             _admin: AdminSubject) -> dict[str, Any]:
    return {"items": services.authz.versions(session, policy_set)}


@router.get("/v1/policies/{policy_set}")
def show_active(policy_set: str, session: DbSession, services: ServicesDep,
                _admin: AdminSubject) -> dict[str, Any]:
    return services.authz.show(session, policy_set, None)


@router.get("/v1/policies/{policy_set}/versions/{version}")
def show(policy_set: str, version: int, session: DbSession, services: ServicesDep,
         _admin: AdminSubject) -> dict[str, Any]:
    return services.authz.show(session, policy_set, version)


@router.get("/v1/policies/{policy_set}/diff")
def diff(policy_set: str, session: DbSession, services: ServicesDep, _admin: AdminSubject,
         from_: Annotated[int, Query(alias="from", ge=1)],
         to: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    return {"from": from_, "to": to, "diff": services.authz.diff(session, policy_set, from_, to)}


@router.post("/v1/policies/{policy_set}/activate")
def activate(policy_set: str, body: Activate, request: Request, session: DbSession,
             services: ServicesDep, admin: AdminSubject) -> dict[str, Any]:
    row = services.authz.activate(session, policy_set, body.version, actor=admin,
                                  ctx=request_context(request, admin))
    session.commit()
    return {"policy_set": policy_set, "active_version": row.version}


@router.post("/v1/policies/{policy_set}/rollback")
def rollback(policy_set: str, request: Request, session: DbSession, services: ServicesDep,
             admin: AdminSubject) -> dict[str, Any]:
    row = services.authz.rollback(session, policy_set, actor=admin,
                                  ctx=request_context(request, admin))
    session.commit()
    return {"policy_set": policy_set, "active_version": row.version}


@router.get("/v1/policies/{policy_set}/schema")
def schema(policy_set: str, session: DbSession, services: ServicesDep,
           _admin: AdminSubject) -> dict[str, Any]:
    from tessera.authz.policies import parse_files

    files, fragment, _v = services.authz.active_files(session, policy_set)
    return {"schema": services.authz.schema_for(session, parse_files(files), fragment)}


@router.get("/v1/authz/snapshot")
def snapshot(services: ServicesDep, _caller: PDPCaller,
             policy_set: Annotated[str, Query(pattern=r"^(default|admin)$")] = DEFAULT_SET
             ) -> dict[str, Any]:
    """Policies and entities for an in-process PEP (tessera.sdk.Authorizer)."""
    return services.authz.export_snapshot(policy_set)
