"""Who may do what: roles, API keys from settings, and keys an admin manages in the serving store.

Three roles, each including the one before: `viewer` reads, `operator` also sends commands and
acknowledges or raises alerts, `admin` also manages keys. Keys come from `FACTORY_API_KEYS`
(`KEY:ROLE,...`, fixed for the process's life) or are created over REST by an admin; those are
kept as SHA-256 digests only, shown once when created, and can be revoked. The same roles serve
the SCADA bridge's users.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime, Engine, String, Table, insert, select, update

from factory_pipelines.store import metadata
from factory_pipelines.telemetry import utc_now


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
KEY_PREFIX = "fk_"  # managed keys start with it, so a leaked one is easy to recognise in logs and scanners
MIN_KEY_CHARS = 12


def parse_api_keys(text: str | None) -> dict[str, Role]:
    """`"k1:operator, k2:viewer"` as {key: role}; ValueError naming the entry that is wrong (never the key)."""
    keys: dict[str, Role] = {}
    for number, entry in enumerate((text or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, role = entry.rpartition(":")
        if not sep or not key.strip():
            raise ValueError(f"FACTORY_API_KEYS entry {number} must be KEY:ROLE")
        if role.strip() not in Role.__members__.values():
            raise ValueError(f"FACTORY_API_KEYS entry {number}: role {role.strip()!r} is not one of {', '.join(Role)}")
        if len(key.strip()) < MIN_KEY_CHARS:
            raise ValueError(f"FACTORY_API_KEYS entry {number}: a key needs at least {MIN_KEY_CHARS} characters")
        keys[key.strip()] = Role(role.strip())
    return keys


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


api_keys_table = Table(
    "api_keys",
    metadata,
    Column("key_id", String(24), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("role", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(120), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(120)),
)


@dataclass(frozen=True, slots=True)
class ManagedKey:
    key_id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: named by key name (never by the key), with the role it grants."""

    name: str
    role: Role
    via: str  # "settings", "store" or "anonymous"


class ApiKeyBook:
    """Keys an admin created, in the serving store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, name: str, role: Role, *, by: str) -> tuple[ManagedKey, str]:
        """A new key; the secret is returned here once and never again."""
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        key = ManagedKey(
            key_id="key-" + secrets.token_hex(6), name=name, role=Role(role), created_at=utc_now(), created_by=by
        )
        row = {
            "key_id": key.key_id,
            "name": key.name,
            "role": key.role.value,
            "digest": key_digest(secret),
            "created_at": key.created_at,
            "created_by": by,
        }
        with self._engine.begin() as conn:
            conn.execute(insert(api_keys_table), [row])
        return key, secret

    def revoke(self, key_id: str, *, by: str) -> ManagedKey | None:
        """Revoke a key (the first revocation stands); None when there is no such key."""
        t = api_keys_table
        with self._engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.key_id == key_id, t.c.revoked_at.is_(None))
                .values(revoked_at=utc_now(), revoked_by=by)
            )
        return self.get(key_id)

    def get(self, key_id: str) -> ManagedKey | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys_table).where(api_keys_table.c.key_id == key_id)).first()
        return _managed(row._mapping) if row is not None else None

    def list(self) -> list[ManagedKey]:
        t = api_keys_table
        with self._engine.connect() as conn:
            return [_managed(row._mapping) for row in conn.execute(select(t).order_by(t.c.created_at, t.c.key_id))]

    def principal_for(self, key: str) -> Principal | None:
        """The principal of a live (not revoked) managed key, or None."""
        t = api_keys_table
        with self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.digest == key_digest(key), t.c.revoked_at.is_(None))).first()
        return Principal(row.name, Role(row.role), "store") if row is not None else None


def settings_principal(keys: dict[str, Role], key: str) -> Principal | None:
    """The principal of a settings key, compared in constant time against every configured key."""
    found: Principal | None = None
    for number, (known, role) in enumerate(keys.items(), start=1):
        if hmac.compare_digest(known.encode(), key.encode()):
            found = Principal(f"settings key {number}", role, "settings")
    return found


def _managed(row: object) -> ManagedKey:
    values = dict(row)  # type: ignore[call-overload]
    values.pop("digest")
    for name in ("created_at", "revoked_at"):
        if values[name] is not None and values[name].tzinfo is None:
            values[name] = values[name].replace(tzinfo=utc_now().tzinfo)
    values["role"] = Role(values["role"])
    return ManagedKey(**values)
