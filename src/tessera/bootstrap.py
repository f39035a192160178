"""`tessera init`: database, signing key and bootstrap admin, never overwriting anything."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from joserfc.jwk import ECKey
from sqlalchemy import select

from tessera.audit import events as ev
from tessera.config import Settings
from tessera.container import DEFAULT_TRUST_DOMAIN, build
from tessera.datadir import secure
from tessera.db import make_engine, make_session_factory, migrate
from tessera.db.engine import sqlite_path
from tessera.db.meta import get_meta, set_meta
from tessera.identity import ADMIN_ROLE
from tessera.identity.models import IdentityRow
from tessera.identity.schemas import CredentialCreate, IdentityCreate
from tessera.keys.models import SigningKeyRow
from tessera.keys.software import write_secret_file

ADMIN_KEY_FILE = "admin-key.jwk"
ADMIN_INFO_FILE = "admin.json"
ADMIN_NAME = "admin"
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    tightened: list[str] = field(default_factory=list)  # permissions taken off existing files
    admin_id: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN


def init(settings: Settings, trust_domain: str | None = None, alg: str = "ES256") -> InitReport:
    report = InitReport()
    if trust_domain is not None and not TRUST_DOMAIN_RE.match(trust_domain):
        raise ValueError("trust domain must be a DNS-like name (lower case, digits, . and -)")
    data_dir: Path = settings.data_dir
    (report.existing if data_dir.exists() else report.created).append(
        f"data directory {data_dir}")
    # Before anything is opened or written: what existed loosely is tightened, and what is
    # created below is private from its first byte.
    report.tightened = secure(data_dir, sqlite_path(settings.db_url), create=True)
    engine = make_engine(settings.db_url)
    pending_before = migrate.pending(engine)
    migrate.upgrade(engine)
    (report.created if pending_before else report.existing).append(
        "database schema" + (" (migrated)" if pending_before else " (up to date)"))
    with make_session_factory(engine)() as s, s.begin():
        stored = get_meta(s, "trust_domain")
        if stored is None:
            td = trust_domain or DEFAULT_TRUST_DOMAIN
            set_meta(s, "trust_domain", td)
            report.created.append(f"trust domain {td}")
        else:
            td = stored
            report.existing.append(f"trust domain {td}" + (
                f" (kept; --trust-domain {trust_domain} ignored)"
                if trust_domain and trust_domain != td else ""))
    report.trust_domain = td
    svc = build(settings, engine=engine, trust_domain=td)
    try:
        with svc.sessions() as s, s.begin():
            if s.scalars(select(SigningKeyRow).where(SigningKeyRow.status == "active",
                                                     SigningKeyRow.purpose == "token")).first():
                report.existing.append("signing key")
            else:
                kid = svc.keys.create(s, alg)
                svc.audit.record(s, ev.KEY_CREATED, actor="system", resource=f"key:{kid}",
                                 data={"alg": alg, "provider": svc.keys.provider.name})
                report.created.append(f"signing key {kid} ({alg}, {svc.keys.provider.name})")
            # The built-in CA: root, and an intermediate when configured.
            ca_created = svc.ca.ensure(s)
            report.created.extend(ca_created)
            if not ca_created:
                report.existing.append("certificate authority")
            admin = s.scalars(select(IdentityRow).where(IdentityRow.name == ADMIN_NAME)).first()
            key_path = data_dir / ADMIN_KEY_FILE
            if admin is not None:
                report.existing.append(f"bootstrap admin {admin.id}")
            else:
                if key_path.exists():
                    raise FileExistsError(
                        f"{key_path} exists but the database has no admin; refusing to "
                        "overwrite it (move it away, or point at the right database)")
                admin = svc.identities.register(s, IdentityCreate(
                    name=ADMIN_NAME, kind="human", purpose="bootstrap administrator"),
                    actor="system")
                svc.identities.grant_role(s, admin.id, ADMIN_ROLE, actor="system")
                private = ECKey.generate_key("P-256", private=True)
                kid = private.thumbprint()
                svc.identities.add_credential(s, admin.id, CredentialCreate(
                    jwk=private.as_dict(private=False)), actor="system")
                jwk = private.as_dict(private=True)
                jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
                write_secret_file(key_path, json.dumps(jwk, indent=2).encode() + b"\n")
                (data_dir / ADMIN_INFO_FILE).write_text(json.dumps(
                    {"client_id": admin.id, "kid": kid}, indent=2) + "\n")
                report.created.append(f"bootstrap admin {admin.id} (key in {key_path})")
                svc.audit.record(s, ev.SYSTEM_INITIALISED, actor="system",
                                 data={"trust_domain": td})
            report.admin_id = admin.id
    finally:
        svc.close()
    return report
