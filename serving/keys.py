"""API keys over REST (admin only): create one (its secret is shown once), list, revoke.

Keys from `FACTORY_API_KEYS` are listed too, by number and role, never by value; they live as long
as the setting and cannot be revoked here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from factory_pipelines.api_keys import ApiKeyBook, ManagedKey, Role
from serving.access import Admin
from serving.context import ServingContext, get_context
from serving.datetimes import IsoDatetime
from serving.problems import NOT_FOUND, ProblemError, problem_responses

router = APIRouter(tags=["access"])


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=120, description="Who or what will use it, e.g. 'line-3 HMI'.")
    role: Role


class KeyOut(BaseModel):
    key_id: str
    name: str
    role: Role
    source: str = Field(description="'store' (created here) or 'settings' (FACTORY_API_KEYS).")
    created_at: IsoDatetime | None = None
    created_by: str | None = None
    revoked_at: IsoDatetime | None = None
    revoked_by: str | None = None

    @classmethod
    def of(cls, key: ManagedKey) -> KeyOut:
        return cls(
            key_id=key.key_id,
            name=key.name,
            role=key.role,
            source="store",
            created_at=key.created_at,
            created_by=key.created_by,
            revoked_at=key.revoked_at,
            revoked_by=key.revoked_by,
        )


class CreatedKey(KeyOut):
    key: str = Field(description="The secret: shown once, store it now. Send as `Authorization: Bearer KEY`.")


class KeyList(BaseModel):
    items: list[KeyOut]


@router.post(
    "/api/keys",
    summary="Create an API key",
    response_model=CreatedKey,
    status_code=201,
    responses=problem_responses(401, 403, 422, 503),
)
def create_key(body: NewKey, caller: Admin, context: Annotated[ServingContext, Depends(get_context)]) -> CreatedKey:
    key, secret = context.store.use(lambda store: ApiKeyBook(store.engine).create(body.name, body.role, by=caller.name))
    return CreatedKey(**KeyOut.of(key).model_dump(), key=secret)


@router.get("/api/keys", summary="List API keys", response_model=KeyList, responses=problem_responses(401, 403, 503))
def list_keys(_caller: Admin, context: Annotated[ServingContext, Depends(get_context)]) -> KeyList:
    managed = context.store.use(lambda store: ApiKeyBook(store.engine).list())
    configured = [
        KeyOut(key_id=f"settings-{number}", name=f"settings key {number}", role=role, source="settings")
        for number, role in enumerate(context.settings.api_key_roles.values(), start=1)
    ]
    return KeyList(items=[*configured, *(KeyOut.of(key) for key in managed)])


@router.delete(
    "/api/keys/{key_id}",
    summary="Revoke an API key",
    response_model=KeyOut,
    responses=problem_responses(401, 403, 404, 503),
)
def revoke_key(key_id: str, caller: Admin, context: Annotated[ServingContext, Depends(get_context)]) -> KeyOut:
    """Refused within a few seconds everywhere (the API remembers a key's role briefly)."""
    revoked = context.store.use(lambda store: ApiKeyBook(store.engine).revoke(key_id, by=caller.name))
    if revoked is None:
        raise ProblemError(
            404, f"no API key {key_id!r} (settings keys are changed in FACTORY_API_KEYS)", type_=NOT_FOUND
        )
    context.managed_keys.clear()  # this process refuses it at once; others within their cache's life
    return KeyOut.of(revoked)
