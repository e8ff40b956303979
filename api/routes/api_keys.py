"""API keys for scripts: created by an account's owner or admin, shown once, revoked at once."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Response, status

from api import examples
from api.deps import Tenant
from api.errors import NotFound, error_example, responses
from api.pagination import Paging
from api.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, Page
from db import api_keys

router = APIRouter(prefix="/api/api-keys", tags=["api keys"])

KeyId = Annotated[UUID, Path(description="The key's id", examples=[examples.API_KEY_ID])]
_MANAGERS_ONLY = error_example(
    403, "forbidden", "Only an owner or admin of the account can do this."
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key (owner or admin); the key is in this answer only",
    responses=responses(403, 422, e403=_MANAGERS_ONLY),
)
async def create_api_key(body: ApiKeyIn, scope: Tenant) -> ApiKeyCreated:
    scope.require_manager()
    async with scope.transaction() as conn:
        row, key = await api_keys.create(
            conn, account_id=scope.account_id, name=body.name, created_by=scope.user_id
        )
    return ApiKeyCreated(**dict(row), key=key)


@router.get(
    "",
    response_model=Page[ApiKeyOut],
    summary="The account's API keys, newest first (never the keys themselves)",
    responses=responses(422),
)
async def list_api_keys(scope: Tenant, paging: Paging) -> Page[ApiKeyOut]:
    async with scope.transaction() as conn:
        total, rows = await api_keys.page(conn, limit=paging.page_size, offset=paging.offset)
    return paging.of(total, [ApiKeyOut.model_validate(dict(r)) for r in rows])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke an API key (owner or admin): refused from the next request on",
    responses=responses(
        403,
        404,
        e403=_MANAGERS_ONLY,
        e404=error_example(404, "api_key_not_found", "No such API key."),
    ),
)
async def revoke_api_key(key_id: KeyId, scope: Tenant) -> Response:
    scope.require_manager()
    async with scope.transaction() as conn:
        revoked = await api_keys.revoke(conn, key_id)
    if not revoked:
        raise NotFound("No such API key.", code="api_key_not_found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
