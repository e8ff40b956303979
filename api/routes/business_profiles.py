"""Business profiles: create and read (update comes with the CRUD issue)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, status

from api import examples
from api.deps import Tenant
from api.errors import NotFound, error_example, responses
from api.pagination import Paging
from api.schemas import BusinessProfileIn, BusinessProfileOut, Page
from db import business_profiles

router = APIRouter(prefix="/api/business-profiles", tags=["business profiles"])

ProfileId = Annotated[
    UUID, Path(description="The business profile's id", examples=[examples.PROFILE_ID])
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BusinessProfileOut,
    responses=responses(422),
    summary="Create a business profile",
)
async def create_business_profile(body: BusinessProfileIn, scope: Tenant) -> BusinessProfileOut:
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
    responses=responses(
        404, e404=error_example(404, "business_profile_not_found", "No such business profile.")
    ),
    summary="One business profile",
)
async def get_business_profile(profile_id: ProfileId, scope: Tenant) -> BusinessProfileOut:
    async with scope.transaction() as conn:
        row = await business_profiles.get_live(conn, profile_id)
    if row is None:
        raise NotFound("No such business profile.", code="business_profile_not_found")
    return BusinessProfileOut.model_validate(dict(row))
