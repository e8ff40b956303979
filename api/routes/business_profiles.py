"""Business profiles: create and read (update comes with the CRUD issue)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, status

from api.deps import Tenant
from api.errors import NotFound, responses
from api.schemas import BusinessProfileIn, BusinessProfileOut, Page
from db import business_profiles

router = APIRouter(prefix="/api/business-profiles", tags=["business profiles"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BusinessProfileOut,
    responses=responses(401, 403, 422),
    summary="Create a business profile",
)
async def create(body: BusinessProfileIn, scope: Tenant) -> BusinessProfileOut:
    async with scope.transaction() as conn:
        row = await business_profiles.create(conn, account_id=scope.account_id, **body.model_dump())
    return BusinessProfileOut.model_validate(dict(row))


@router.get(
    "",
    response_model=Page[BusinessProfileOut],
    responses=responses(401, 403, 422),
    summary="The account's business profiles, newest first",
)
async def list_profiles(
    scope: Tenant,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[BusinessProfileOut]:
    async with scope.transaction() as conn:
        total, rows = await business_profiles.page(
            conn, limit=page_size, offset=(page - 1) * page_size
        )
    return Page(
        page=page,
        page_size=page_size,
        total=total,
        data=[BusinessProfileOut.model_validate(dict(r)) for r in rows],
    )


@router.get(
    "/{profile_id}",
    response_model=BusinessProfileOut,
    responses=responses(401, 403, 404, 422),
    summary="One business profile",
)
async def get(profile_id: UUID, scope: Tenant) -> BusinessProfileOut:
    async with scope.transaction() as conn:
        row = await business_profiles.get_live(conn, profile_id)
    if row is None:
        raise NotFound("No such business profile.", code="business_profile_not_found")
    return BusinessProfileOut.model_validate(dict(row))
