"""Business profiles: members read them; owners and admins create, replace and delete them."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, status
from fastapi.responses import Response

from api import examples
from api.deps import Tenant
from api.errors import NotFound, error_example, responses
from api.pagination import Paging
from api.schemas import BusinessProfileIn, BusinessProfileOut, Page
from db import business_profiles

router = APIRouter(prefix="/api/business-profiles", tags=["business profiles"])

_NOT_FOUND = error_example(404, "business_profile_not_found", "No such business profile.")
_MANAGERS_ONLY = error_example(
    403, "forbidden", "Only an owner or admin of the account can do this."
)

ProfileId = Annotated[
    UUID, Path(description="The business profile's id", examples=[examples.PROFILE_ID])
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BusinessProfileOut,
    responses=responses(403, e403=_MANAGERS_ONLY),
    summary="Create a business profile",
)
async def create_business_profile(body: BusinessProfileIn, scope: Tenant) -> BusinessProfileOut:
    """Owners and admins only."""
    scope.require_manager()
    async with scope.transaction() as conn:
        row = await business_profiles.create(conn, account_id=scope.account_id, **body.model_dump())
    return BusinessProfileOut.model_validate(dict(row))


@router.get(
    "",
    response_model=Page[BusinessProfileOut],
    responses=responses(422),
    summary="The account's business profiles, newest first",
)
async def list_business_profiles(scope: Tenant, paging: Paging) -> Page[BusinessProfileOut]:
    async with scope.transaction() as conn:
        total, rows = await business_profiles.page(
            conn, limit=paging.page_size, offset=paging.offset
        )
    return paging.of(total, [BusinessProfileOut.model_validate(dict(r)) for r in rows])


@router.get(
    "/{profile_id}",
    response_model=BusinessProfileOut,
    responses=responses(404, e404=_NOT_FOUND),
    summary="One business profile",
)
async def get_business_profile(profile_id: ProfileId, scope: Tenant) -> BusinessProfileOut:
    async with scope.transaction() as conn:
        row = await business_profiles.get_live(conn, profile_id)
    if row is None:
        raise NotFound("No such business profile.", code="business_profile_not_found")
    return BusinessProfileOut.model_validate(dict(row))


@router.put(
    "/{profile_id}",
    response_model=BusinessProfileOut,
    responses=responses(403, 404, e403=_MANAGERS_ONLY, e404=_NOT_FOUND),
    summary="Replace a business profile's fields",
)
async def replace_business_profile(
    profile_id: ProfileId, body: BusinessProfileIn, scope: Tenant
) -> BusinessProfileOut:
    """A full update: a field left out takes its default (empty text). Runs already past
    their charge keep the text they started with; the others use the new one. Owners and
    admins only."""
    scope.require_manager()
    async with scope.transaction() as conn:
        row = await business_profiles.replace(conn, profile_id, **body.model_dump())
    if row is None:
        raise NotFound("No such business profile.", code="business_profile_not_found")
    return BusinessProfileOut.model_validate(dict(row))


@router.delete(
    "/{profile_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(403, 404, e403=_MANAGERS_ONLY, e404=_NOT_FOUND),
    summary="Delete a business profile",
)
async def delete_business_profile(profile_id: ProfileId, scope: Tenant) -> Response:
    """It leaves every list and lookup, and no new analysis can use it. Its leads and past
    runs stay; runs in flight that were not yet charged fail at the charge and cost
    nothing, the others finish. Owners and admins only."""
    scope.require_manager()
    async with scope.transaction() as conn:
        if not await business_profiles.soft_delete(conn, profile_id):
            raise NotFound("No such business profile.", code="business_profile_not_found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
