"""The dashboard page at `/`: three plain static files (serving/static), no build step, no network.

The page itself is public, like any static asset: it holds no data. Everything it shows comes
from the API with the key the user types into it (`X-API-Key`, and `?api_key=` on the WebSocket),
so the same roles apply as for any other client. Only the files listed in `STATIC_FILES` are
served, so nothing else under the package can be read through `/static/...`.

Files are answered with an ETag and `Cache-Control: no-cache`: a browser revalidates on every
load and gets a 304 while the file is unchanged, so an upgraded page is never stale.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from serving.problems import NOT_FOUND, ProblemError, problem_responses

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = "index.html"
# name -> media type; the only files /static/{name} serves.
STATIC_FILES: dict[str, str] = {
    INDEX_FILE: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CACHE_CONTROL = "no-cache"  # revalidate each time (cheap: a 304 while the ETag matches)
# The page loads only its own files and talks only to its own origin (REST and WebSocket).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _file_responses(*media_types: str) -> dict[int | str, dict[str, Any]]:
    content = {media_type.split(";")[0]: {"schema": {"type": "string"}} for media_type in media_types}
    return {
        200: {"description": "The file.", "content": content},
        304: {"description": "Not modified since the ETag the browser sent."},
    }


def _etag(stat: os.stat_result) -> str:
    digest = hashlib.md5(f"{stat.st_mtime_ns}-{stat.st_size}".encode(), usedforsecurity=False).hexdigest()
    return f'"{digest}"'


def _not_modified(etag: str, if_none_match: str | None) -> bool:
    if not if_none_match:
        return False
    offered = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in offered or "*" in offered


def static_file(name: str, if_none_match: str | None) -> Response:
    """One of STATIC_FILES with its media type, ETag and cache policy; a 304 when the browser has it."""
    media_type = STATIC_FILES.get(name)
    path = STATIC_DIR / name
    if media_type is None or not path.is_file():
        raise ProblemError(404, f"no static file {name!r}; there are {sorted(STATIC_FILES)}", type_=NOT_FOUND)
    etag = _etag(path.stat())
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if name == INDEX_FILE:
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if _not_modified(etag, if_none_match):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header(description="The ETag of the copy the browser holds.")]


@router.get(
    "/",
    summary="The dashboard page",
    response_class=FileResponse,
    responses=_file_responses(STATIC_FILES[INDEX_FILE]),
)
def dashboard_page(if_none_match: IfNoneMatch = None) -> Response:
    """Fleet, alerts with acknowledge, a chart of one asset, and the shift backlog, live.

    The page asks for an API key (kept in the browser) unless anonymous reads are allowed.
    """
    return static_file(INDEX_FILE, if_none_match)


@router.get(
    "/static/{name}",
    summary="The dashboard's static files",
    response_class=FileResponse,
    responses={**_file_responses(*STATIC_FILES.values()), **problem_responses(404)},
)
def dashboard_static(
    name: Annotated[str, PathParam(max_length=64, description="One of: " + ", ".join(sorted(STATIC_FILES)))],
    if_none_match: IfNoneMatch = None,
) -> Response:
    return static_file(name, if_none_match)
