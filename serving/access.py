"""Who is calling: API keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`) and the role each grants.

Routes declare the role they need with `Depends(require_viewer)`, `require_operator` or
`require_admin`. Without a credential a request may only read, and only where settings allow it
(`FACTORY_ALLOW_ANONYMOUS_READ`, on in the local demo); a wrong key is a 401 even then, so a typo
in a client's key shows at once instead of silently reading as anonymous. Keys an admin created
are looked up in the store and remembered for a few seconds, so revoking one takes effect within
`context.MANAGED_KEY_TTL_S` without a database query on every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from factory_pipelines.api_keys import ApiKeyBook, Principal, Role, settings_principal
from serving.context import ServingContext, get_context
from serving.problems import FORBIDDEN, UNAUTHENTICATED, ProblemError

ANONYMOUS = Principal("anonymous", Role.VIEWER, "anonymous")
HOW_TO_AUTHENTICATE = "send an API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`"

bearer_scheme = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


async def presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    header_key: Annotated[str | None, Depends(api_key_scheme)],
) -> str | None:
    if header_key:
        return header_key
    return bearer.credentials if bearer is not None else None


async def current_principal(
    key: Annotated[str | None, Depends(presented_key)],
    context: Annotated[ServingContext, Depends(get_context)],
) -> Principal | None:
    """The caller, or None when no credential was sent; 401 for a key nobody issued (or one revoked).

    The dependencies of the access check are `async`: a plain `def` costs a worker-thread round trip
    per request, several per request here, which under load was a third of the API's time. Only a key
    that is not in the settings may need the store, and that lookup goes to a worker thread.
    """
    if key is None:
        return None
    found = settings_principal(context.settings.api_key_roles, key)
    if found is None:
        found = await run_in_threadpool(managed_principal, key, context)
    if found is None:
        raise _unauthenticated("unknown or revoked API key")
    return found


def principal_for_key(key: str, context: ServingContext) -> Principal | None:
    """Whom a key names: a settings key, else a managed one (cached); None when nobody issued it or it was revoked.

    Also used by the WebSocket hub, which takes its key from the query string. May read the store
    (StoreUnavailableError when it is down).
    """
    return settings_principal(context.settings.api_key_roles, key) or managed_principal(key, context)


def managed_principal(key: str, context: ServingContext) -> Principal | None:
    """Whom an admin-managed key names (cached for a few seconds); may read the store."""
    return context.managed_keys.lookup(
        key, lambda k: context.store.use(lambda store: ApiKeyBook(store.engine).principal_for(k))
    )


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets a request through when its caller holds `role` (or a higher one)."""

    async def dependency(
        principal: Annotated[Principal | None, Depends(current_principal)],
        context: Annotated[ServingContext, Depends(get_context)],
    ) -> Principal:
        if principal is None:
            if role == Role.VIEWER and context.settings.allow_anonymous_read:
                return ANONYMOUS
            raise _unauthenticated(f"this call needs the {role} role: {HOW_TO_AUTHENTICATE}")
        if not principal.role.allows(role):
            raise ProblemError(
                403, f"{principal.name} has the {principal.role} role; this call needs {role}", type_=FORBIDDEN
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


def _unauthenticated(detail: str) -> ProblemError:
    return ProblemError(401, detail, type_=UNAUTHENTICATED, headers={"WWW-Authenticate": 'Bearer realm="factory"'})


require_viewer = require(Role.VIEWER)
require_operator = require(Role.OPERATOR)
require_admin = require(Role.ADMIN)

Viewer = Annotated[Principal, Depends(require_viewer)]
Operator = Annotated[Principal, Depends(require_operator)]
Admin = Annotated[Principal, Depends(require_admin)]
