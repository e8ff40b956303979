"""What the database itself allows, whoever connects: the API role's reach over every tenant
table, the run transitions it may make, and the rules that bind every role (composite tenant
references, forward-only runs, frozen finished runs).

Each statement runs as the API role with the tenant set to account A, the way a request's
transaction is, inside a transaction that is rolled back.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from core.auth import mint_token
from db import credits
from db.accounts import create_with_owner
from tests.conftest import Account
from tests.helpers import start_ok, wait_for

Expected = int | type[Exception]
PRIVILEGE = asyncpg.InsufficientPrivilegeError
FOREIGN_KEY = asyncpg.ForeignKeyViolationError
CHECK = asyncpg.CheckViolationError


@dataclass
class World:
    a: UUID
    b: UUID
    a_user: UUID
    b_user: UUID
    a_profile: UUID
    b_profile: UUID
    a_lead: UUID
    b_run: UUID
    runs: dict[str, UUID]  # account A's runs by status

    def sql(self, template: str) -> str:
        return template.format(
            a=f"'{self.a}'",
            b=f"'{self.b}'",
            a_user=f"'{self.a_user}'",
            b_user=f"'{self.b_user}'",
            a_profile=f"'{self.a_profile}'",
            b_profile=f"'{self.b_profile}'",
            a_lead=f"'{self.a_lead}'",
            b_run=f"'{self.b_run}'",
            **{status: f"'{run_id}'" for status, run_id in self.runs.items()},
            new_id=f"'{uuid4()}'",
        )


async def _run_in(pool: asyncpg.Pool, account: UUID, profile: UUID, status: str) -> UUID:
    """A run of account `account` brought to `status` the way workers do (charged first
    when it gets past pending)."""
    run_id = uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO analyses (id, account_id, business_profile_id, username,
                   analysis_type, credits_cost) VALUES ($1, $2, $3, $4, 'light', 1)""",
            run_id,
            account,
            profile,
            f"rule_{uuid4().hex[:8]}",
        )
        if status in ("processing", "complete"):
            await credits.charge_run(conn, account_id=account, run_id=run_id, cost=1)
            await conn.execute("UPDATE analyses SET status = 'processing' WHERE id = $1", run_id)
        if status == "complete":
            await conn.execute(
                """UPDATE analyses SET status = 'complete', credits_charged = 1,
                       finished_at = now() WHERE id = $1""",
                run_id,
            )
        if status in ("failed", "cancelled"):
            await conn.execute(
                "UPDATE analyses SET status = $2, finished_at = now() WHERE id = $1",
                run_id,
                status,
            )
    return run_id


@pytest.fixture(scope="module")
async def world(api, system_pool, settings) -> AsyncIterator[World]:
    made = []
    for name in ("A", "B"):
        async with system_pool.acquire() as conn:
            created = await create_with_owner(conn, name=name, credits_granted=50)
        token = mint_token(settings, created.user_id, valid_for=timedelta(hours=1))
        account = Account(created.account_id, created.user_id, created.business_profile_id, token)
        # A finished run through the whole stack: a lead, a charge, a result.
        run_id = await start_ok(api, account, f"world_{uuid4().hex[:8]}")
        assert (await wait_for(api, account, run_id))["status"] == "complete"
        made.append((account, UUID(run_id)))
    (a, a_complete), (b, b_complete) = made
    runs = {"complete": a_complete}
    for status in ("pending", "processing", "failed", "cancelled"):
        runs[status] = await _run_in(system_pool, a.account_id, a.business_profile_id, status)
    a_lead = await system_pool.fetchval("SELECT lead_id FROM analyses WHERE id = $1", a_complete)
    yield World(
        a=a.account_id,
        b=b.account_id,
        a_user=a.user_id,
        b_user=b.user_id,
        a_profile=a.business_profile_id,
        b_profile=b.business_profile_id,
        a_lead=a_lead,
        b_run=b_complete,
        runs=runs,
    )
    # Leave nothing in flight, and the ledger sound.
    async with system_pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1",
            runs["pending"],
        )
        await credits.refund_run(conn, account_id=a.account_id, run_id=runs["processing"])
        await conn.execute(
            "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1",
            runs["processing"],
        )
    async with system_pool.acquire() as conn:
        for account in (a, b):
            assert await credits.invariant_violations(conn, account.account_id) == []


async def _as_api(settings, world: World, sql: str) -> int:
    """Runs `sql` as the API role for account A, then rolls back; the rows it counted or
    touched."""
    conn = await asyncpg.connect(settings.api_dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(
                "SELECT set_config('app.user_id', $1, true), "
                "set_config('app.account_id', $2, true)",
                str(world.a_user),
                str(world.a),
            )
            if sql.lstrip().upper().startswith("SELECT"):
                return int(await conn.fetchval(sql))
            status = await conn.execute(sql)
            return int(status.rsplit(" ", 1)[-1])
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def _check(settings, world: World, template: str, expected: Expected) -> None:
    sql = world.sql(template)
    if isinstance(expected, int):
        assert await _as_api(settings, world, sql) == expected, sql
    else:
        with pytest.raises(expected):
            await _as_api(settings, world, sql)


# (table, what is tried, SQL, expected row count or error)
API_ROLE_MATRIX: list[tuple[str, str, str, Expected]] = [
    # accounts: the user's own, read-only
    ("accounts", "read own", "SELECT count(*) FROM accounts WHERE id = {a}", 1),
    ("accounts", "read other", "SELECT count(*) FROM accounts WHERE id = {b}", 0),
    # ... also by the tenant alone (an API key's request has no user)
    (
        "accounts",
        "read other by the membership policy",
        "SELECT count(*) FROM accounts WHERE id <> {a}",
        0,
    ),
    ("accounts", "insert", "INSERT INTO accounts (name) VALUES ('x')", PRIVILEGE),
    ("accounts", "update own", "UPDATE accounts SET name = 'x' WHERE id = {a}", PRIVILEGE),
    ("accounts", "delete own", "DELETE FROM accounts WHERE id = {a}", PRIVILEGE),
    # users: only the signed-in user, read-only
    ("users", "read self", "SELECT count(*) FROM users WHERE id = {a_user}", 1),
    ("users", "read other", "SELECT count(*) FROM users WHERE id = {b_user}", 0),
    ("users", "insert", "INSERT INTO users (id) VALUES ({new_id})", PRIVILEGE),
    ("users", "update self", "UPDATE users SET email = 'x@y.z' WHERE id = {a_user}", PRIVILEGE),
    ("users", "delete self", "DELETE FROM users WHERE id = {a_user}", PRIVILEGE),
    # account_members: the user's own memberships, read-only
    (
        "account_members",
        "read own",
        "SELECT count(*) FROM account_members WHERE user_id = {a_user}",
        1,
    ),
    (
        "account_members",
        "read other",
        "SELECT count(*) FROM account_members WHERE account_id = {b}",
        0,
    ),
    (
        "account_members",
        "join another account",
        "INSERT INTO account_members (account_id, user_id, role) VALUES ({b}, {a_user}, 'owner')",
        PRIVILEGE,
    ),
    (
        "account_members",
        "promote self",
        "UPDATE account_members SET role = 'owner' WHERE user_id = {a_user}",
        PRIVILEGE,
    ),
    (
        "account_members",
        "delete",
        "DELETE FROM account_members WHERE user_id = {a_user}",
        PRIVILEGE,
    ),
    # business_profiles: the tenant's own, created and edited, never moved or deleted
    (
        "business_profiles",
        "read own",
        "SELECT count(*) FROM business_profiles WHERE account_id = {a}",
        1,
    ),
    (
        "business_profiles",
        "read other",
        "SELECT count(*) FROM business_profiles WHERE id = {b_profile}",
        0,
    ),
    (
        "business_profiles",
        "insert own",
        "INSERT INTO business_profiles (account_id, name) VALUES ({a}, 'x')",
        1,
    ),
    (
        "business_profiles",
        "insert for another account",
        "INSERT INTO business_profiles (account_id, name) VALUES ({b}, 'x')",
        PRIVILEGE,
    ),
    (
        "business_profiles",
        "edit own",
        "UPDATE business_profiles SET name = 'y' WHERE id = {a_profile}",
        1,
    ),
    (
        "business_profiles",
        "move own to another account",
        "UPDATE business_profiles SET account_id = {b} WHERE id = {a_profile}",
        PRIVILEGE,
    ),
    (
        "business_profiles",
        "change own id",
        "UPDATE business_profiles SET id = {new_id} WHERE id = {a_profile}",
        PRIVILEGE,
    ),
    (
        "business_profiles",
        "edit other",
        "UPDATE business_profiles SET name = 'y' WHERE id = {b_profile}",
        0,
    ),
    (
        "business_profiles",
        "delete own",
        "DELETE FROM business_profiles WHERE id = {a_profile}",
        PRIVILEGE,
    ),
    # credit_balances and credit_ledger: read the tenant's own, never write
    (
        "credit_balances",
        "read own",
        "SELECT count(*) FROM credit_balances WHERE account_id = {a}",
        1,
    ),
    (
        "credit_balances",
        "read other",
        "SELECT count(*) FROM credit_balances WHERE account_id = {b}",
        0,
    ),
    (
        "credit_balances",
        "insert",
        "INSERT INTO credit_balances (account_id, balance) VALUES ({new_id}, 5)",
        PRIVILEGE,
    ),
    (
        "credit_balances",
        "raise own",
        "UPDATE credit_balances SET balance = balance + 100 WHERE account_id = {a}",
        PRIVILEGE,
    ),
    (
        "credit_balances",
        "delete own",
        "DELETE FROM credit_balances WHERE account_id = {a}",
        PRIVILEGE,
    ),
    ("credit_ledger", "read own", "SELECT count(*) FROM credit_ledger WHERE account_id = {a}", 3),
    (
        "credit_ledger",
        "read other",
        "SELECT count(*) FROM credit_ledger WHERE account_id = {b}",
        0,
    ),
    (
        "credit_ledger",
        "grant self",
        """INSERT INTO credit_ledger (account_id, delta, balance_after, kind, idempotency_key)
           VALUES ({a}, 100, 150, 'grant', {new_id})""",
        PRIVILEGE,
    ),
    (
        "credit_ledger",
        "rewrite own",
        "UPDATE credit_ledger SET delta = 100 WHERE account_id = {a}",
        PRIVILEGE,
    ),
    (
        "credit_ledger",
        "delete own",
        "DELETE FROM credit_ledger WHERE account_id = {a}",
        PRIVILEGE,
    ),
    # analyses: read the tenant's own, create pending runs, flag them; see the transitions
    ("analyses", "read own", "SELECT count(*) FROM analyses WHERE account_id = {a}", 5),
    ("analyses", "read other", "SELECT count(*) FROM analyses WHERE account_id = {b}", 0),
    (
        "analyses",
        "insert own pending",
        """INSERT INTO analyses (id, account_id, business_profile_id, requested_by, username,
               analysis_type, credits_cost)
           VALUES ({new_id}, {a}, {a_profile}, {a_user}, 'fresh', 'light', 1)""",
        1,
    ),
    (
        "analyses",
        "insert own with another account's business profile",
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost) VALUES ({new_id}, {a}, {b_profile}, 'mixed', 'light', 1)""",
        FOREIGN_KEY,
    ),
    (
        "analyses",
        "insert own requested by a user of another account",
        """INSERT INTO analyses (id, account_id, business_profile_id, requested_by, username,
               analysis_type, credits_cost)
           VALUES ({new_id}, {a}, {a_profile}, {b_user}, 'mixed', 'light', 1)""",
        FOREIGN_KEY,
    ),
    (
        "analyses",
        "insert for another account",
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost) VALUES ({new_id}, {b}, {b_profile}, 'theirs', 'light', 1)""",
        PRIVILEGE,
    ),
    (
        "analyses",
        "insert own already complete",
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost, status) VALUES ({new_id}, {a}, {a_profile}, 'x', 'light', 1,
               'complete')""",
        PRIVILEGE,
    ),
    (
        "analyses",
        "insert own with a result",
        """INSERT INTO analyses (id, account_id, business_profile_id, username, analysis_type,
               credits_cost, result) VALUES ({new_id}, {a}, {a_profile}, 'x', 'light', 1,
               '{{}}')""",
        PRIVILEGE,
    ),
    (
        "analyses",
        "flag other's run",
        "UPDATE analyses SET cancel_requested_at = now() WHERE id = {b_run}",
        0,
    ),
    (
        "analyses",
        "cancel own complete run",
        """UPDATE analyses SET status = 'cancelled', cancel_requested_at = now(),
               finished_at = now() WHERE id = {complete}""",
        CHECK,
    ),
    (
        "analyses",
        "fail own charged run",
        """UPDATE analyses SET status = 'failed', cancel_requested_at = now(),
               finished_at = now() WHERE id = {processing}""",
        PRIVILEGE,
    ),
    (
        "analyses",
        "fail own pending run without flagging it",
        "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = {pending}",
        PRIVILEGE,
    ),
    (
        "analyses",
        "move own pending run's idempotency key",
        "UPDATE analyses SET idempotency_key = 'stolen' WHERE id = {pending}",
        PRIVILEGE,
    ),
    (
        "analyses",
        "give own run a result",
        "UPDATE analyses SET result = '{{}}' WHERE id = {pending}",
        PRIVILEGE,
    ),
    ("analyses", "delete own", "DELETE FROM analyses WHERE id = {pending}", PRIVILEGE),
    # leads: read the tenant's own, never write
    ("leads", "read own", "SELECT count(*) FROM leads WHERE account_id = {a}", 1),
    ("leads", "read other", "SELECT count(*) FROM leads WHERE account_id = {b}", 0),
    (
        "leads",
        "insert",
        "INSERT INTO leads (account_id, business_profile_id, username) "
        "VALUES ({a}, {a_profile}, 'x')",
        PRIVILEGE,
    ),
    ("leads", "update own", "UPDATE leads SET last_score = 100 WHERE id = {a_lead}", PRIVILEGE),
    ("leads", "delete own", "DELETE FROM leads WHERE id = {a_lead}", PRIVILEGE),
    (
        "leads",
        "soft-delete own",
        "UPDATE leads SET deleted_at = now(), updated_at = now() WHERE id = {a_lead}",
        1,
    ),
    (
        "leads",
        "soft-delete other",
        "UPDATE leads SET deleted_at = now() WHERE account_id = {b}",
        0,
    ),
    (
        "leads",
        "move own to another account",
        "UPDATE leads SET account_id = {b} WHERE id = {a_lead}",
        PRIVILEGE,
    ),
    # allowance_uses: read-only (workers draw and give back units)
    (
        "allowance_uses",
        "draw a unit",
        "INSERT INTO allowance_uses (run_id, account_id, month, action, allowance) "
        "VALUES ({pending}, {a}, date_trunc('month', now())::date, 'light', 10)",
        PRIVILEGE,
    ),
    ("allowance_uses", "give back", "UPDATE allowance_uses SET returned_at = now()", PRIVILEGE),
    ("allowance_uses", "delete", "DELETE FROM allowance_uses", PRIVILEGE),
    # rate_limits: the tenant's counters, read-only (counted through rate_limit_hit)
    ("rate_limits", "read own", "SELECT count(*) FROM rate_limits WHERE account_id = {a}", 2),
    ("rate_limits", "read other", "SELECT count(*) FROM rate_limits WHERE account_id = {b}", 0),
    (
        "rate_limits",
        "reset own",
        "UPDATE rate_limits SET hits = 0 WHERE account_id = {a}",
        PRIVILEGE,
    ),
    ("rate_limits", "delete own", "DELETE FROM rate_limits WHERE account_id = {a}", PRIVILEGE),
    # stripe_events: nothing for the API role (it stores events through a function)
    ("stripe_events", "read", "SELECT count(*) FROM stripe_events", PRIVILEGE),
    (
        "stripe_events",
        "insert",
        "INSERT INTO stripe_events (id, type, payload) VALUES ('evt_x', 'x', '{{}}')",
        PRIVILEGE,
    ),
    # api_keys: the tenant's own, created and revoked, never rewritten or deleted
    ("api_keys", "read other", "SELECT count(*) FROM api_keys WHERE account_id = {b}", 0),
    (
        "api_keys",
        "create own",
        "INSERT INTO api_keys (account_id, name, prefix, key_hash) "
        "VALUES ({a}, 'k', 'osk_x', 'h1')",
        1,
    ),
    (
        "api_keys",
        "create for another account",
        "INSERT INTO api_keys (account_id, name, prefix, key_hash) "
        "VALUES ({b}, 'k', 'osk_x', 'h2')",
        PRIVILEGE,
    ),
    (
        "api_keys",
        "swap a key's hash",
        "UPDATE api_keys SET key_hash = 'h3' WHERE account_id = {a}",
        PRIVILEGE,
    ),
    ("api_keys", "delete", "DELETE FROM api_keys WHERE account_id = {a}", PRIVILEGE),
    # profile_cache: public data; the API reads a lead's and drops it, only workers write
    (
        "profile_cache",
        "read",
        "SELECT count(*) FROM profile_cache WHERE key = 'instagram:nobody_here:v1'",
        0,
    ),
    (
        "profile_cache",
        "insert",
        "INSERT INTO profile_cache (key, profile, size_bytes) VALUES ('k', '{{}}', 2)",
        PRIVILEGE,
    ),
    (
        "profile_cache",
        "update",
        "UPDATE profile_cache SET size_bytes = 0 WHERE key = 'instagram:nobody_here:v1'",
        PRIVILEGE,
    ),
    (
        "profile_cache",
        "delete",
        "DELETE FROM profile_cache WHERE key = 'instagram:nobody_here:v1'",
        0,
    ),
    # lead_changes: read the account's own, written by workers only
    ("lead_changes", "read other", "SELECT count(*) FROM lead_changes WHERE account_id = {b}", 0),
    (
        "lead_changes",
        "insert",
        "INSERT INTO lead_changes (account_id, lead_id, analysis_id, field, before, after) "
        "VALUES ({a}, gen_random_uuid(), gen_random_uuid(), 'biography', '1', '2')",
        PRIVILEGE,
    ),
    ("lead_changes", "delete", "DELETE FROM lead_changes", PRIVILEGE),
]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(sql, expected, id=f"{table}: {what}")
        for table, what, sql, expected in API_ROLE_MATRIX
    ],
)
async def test_api_role_reach_over_tenant_tables(world, settings, sql, expected):
    await _check(settings, world, sql, expected)


STATUSES = ["pending", "processing", "complete", "failed", "cancelled"]
# What the API does: flag an in-flight run, end a run that never started.
API_TRANSITIONS = {
    ("pending", "pending"),
    ("processing", "processing"),
    ("pending", "failed"),
    ("pending", "cancelled"),
}


@pytest.mark.parametrize(
    ("before", "after"),
    list(itertools.product(STATUSES, STATUSES)),
    ids=[f"{b}->{a}" for b, a in itertools.product(STATUSES, STATUSES)],
)
async def test_api_role_makes_only_the_apis_transitions(world, settings, before, after):
    if before == after:  # the flag, the only change the API makes to a run it leaves as is
        sql = f"UPDATE analyses SET cancel_requested_at = now() WHERE id = {{{before}}}"
    else:
        sql = (
            f"UPDATE analyses SET status = '{after}', cancel_requested_at = now(), "
            f"finished_at = now() WHERE id = {{{before}}}"
        )
    if (before, after) in API_TRANSITIONS:
        assert await _as_api(settings, world, world.sql(sql)) == 1
    else:
        with pytest.raises((PRIVILEGE, CHECK)):
            await _as_api(settings, world, world.sql(sql))


async def test_api_role_cannot_become_the_system_role(settings):
    conn = await asyncpg.connect(settings.api_dsn)
    try:
        with pytest.raises(PRIVILEGE):
            await conn.execute("SET ROLE oslira_worker")
    finally:
        await conn.close()


async def test_api_role_cannot_clear_a_cancellation_flag(world, settings, system_pool):
    flagged = await _run_in(system_pool, world.a, world.a_profile, "pending")
    await system_pool.execute(
        "UPDATE analyses SET cancel_requested_at = now() WHERE id = $1", flagged
    )
    try:
        with pytest.raises(PRIVILEGE):
            await _as_api(
                settings,
                world,
                f"UPDATE analyses SET cancel_requested_at = NULL WHERE id = '{flagged}'",
            )
    finally:
        await system_pool.execute(
            "UPDATE analyses SET status = 'cancelled', finished_at = now() WHERE id = $1",
            flagged,
        )


@pytest.mark.parametrize("terminal", ["complete", "failed", "cancelled"])
async def test_no_role_moves_a_run_out_of_a_terminal_status(world, system_pool, servers, terminal):
    run_id = world.runs[terminal]
    owner = await asyncpg.connect(servers.database_url)
    try:
        for conn in (system_pool, owner):
            for status in STATUSES:
                if status == terminal:
                    continue
                with pytest.raises(CHECK):
                    await conn.execute(
                        "UPDATE analyses SET status = $2 WHERE id = $1", run_id, status
                    )
            with pytest.raises(CHECK):  # nor rewrites what it records
                await conn.execute(
                    "UPDATE analyses SET error_code = 'edited' WHERE id = $1", run_id
                )
    finally:
        await owner.close()


async def test_runs_move_only_forward_for_the_system_role_too(world, system_pool):
    pending = await _run_in(system_pool, world.a, world.a_profile, "pending")
    try:
        with pytest.raises(CHECK):  # never straight to complete
            await system_pool.execute(
                "UPDATE analyses SET status = 'complete' WHERE id = $1", pending
            )
        with pytest.raises(CHECK):  # processing means charged
            await system_pool.execute(
                "UPDATE analyses SET status = 'processing' WHERE id = $1", pending
            )
        with pytest.raises(CHECK):
            await system_pool.execute("UPDATE analyses SET credits_cost = 0 WHERE id = $1", pending)
        with pytest.raises(CHECK):  # born pending, uncharged, without a result
            await system_pool.execute(
                """INSERT INTO analyses (id, account_id, business_profile_id, username,
                       analysis_type, credits_cost, status)
                   VALUES ($1, $2, $3, 'born_done', 'light', 1, 'complete')""",
                uuid4(),
                world.a,
                world.a_profile,
            )
        with pytest.raises(CHECK):  # a complete run keeps exactly its cost
            await system_pool.execute(
                "UPDATE analyses SET status = 'complete', credits_charged = 0 WHERE id = $1",
                world.runs["processing"],
            )
    finally:
        await system_pool.execute(
            "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1", pending
        )


async def test_a_member_who_leaves_keeps_their_runs_unattributed(world, system_pool, servers):
    member = uuid4()
    async with system_pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (id) VALUES ($1)", member)
        await conn.execute(
            "INSERT INTO account_members (account_id, user_id, role) VALUES ($1, $2, 'member')",
            world.a,
            member,
        )
    in_flight = await _run_in(system_pool, world.a, world.a_profile, "pending")
    await system_pool.execute(
        "UPDATE analyses SET requested_by = $2 WHERE id = $1", in_flight, member
    )
    owner = await asyncpg.connect(servers.database_url)
    try:
        await owner.execute(
            "DELETE FROM account_members WHERE account_id = $1 AND user_id = $2", world.a, member
        )
    finally:
        await owner.close()
    row = await system_pool.fetchrow(
        "SELECT status, requested_by FROM analyses WHERE id = $1", in_flight
    )
    assert (row["status"], row["requested_by"]) == ("pending", None)
    await system_pool.execute(
        "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1", in_flight
    )


async def test_no_role_can_mix_tenants_in_one_row(world, system_pool):
    with pytest.raises(FOREIGN_KEY):  # a lead of A under B's business profile
        await system_pool.execute(
            """INSERT INTO leads (account_id, business_profile_id, username)
               VALUES ($1, $2, 'mixed')""",
            world.a,
            world.b_profile,
        )
    with pytest.raises(FOREIGN_KEY):  # A's run pointing at B's lead
        await system_pool.execute(
            "UPDATE analyses SET lead_id = $2 WHERE id = $1",
            world.runs["processing"],
            await system_pool.fetchval("SELECT lead_id FROM analyses WHERE id = $1", world.b_run),
        )
    with pytest.raises(FOREIGN_KEY):  # a ledger row of A for B's run
        await system_pool.execute(
            """INSERT INTO credit_ledger (account_id, delta, balance_after, kind, run_id,
                   idempotency_key) VALUES ($1, 1, 1, 'refund', $2, $3)""",
            world.a,
            world.b_run,
            uuid4().hex,
        )


async def test_a_run_the_rules_complete_is_refunded_and_an_ai_run_never(world, system_pool):
    """The run guard (migration 0020): a run completed by the rule-based fallback charged
    nothing and was refunded in its transaction; a run completed by the AI keeps its charge
    and has no refund."""
    processing = await _run_in(system_pool, world.a, world.a_profile, "processing")
    complete_rules = """UPDATE analyses SET status = 'complete', engine = 'rules',
                            credits_charged = $2, finished_at = now() WHERE id = $1"""
    try:
        with pytest.raises(CHECK):  # not refunded
            await system_pool.execute(complete_rules, processing, 0)
        async with system_pool.acquire() as conn, conn.transaction():
            refund = await credits.refund_run(conn, account_id=world.a, run_id=processing)
            assert refund is not None and refund.delta == 1
            # Refunded, yet completing as the AI's: refused.
            with pytest.raises(CHECK):
                async with conn.transaction():
                    await conn.execute(
                        """UPDATE analyses SET status = 'complete', engine = 'ai',
                               credits_charged = 1, finished_at = now() WHERE id = $1""",
                        processing,
                    )
            with pytest.raises(CHECK):  # refunded, but says it charged
                async with conn.transaction():
                    await conn.execute(complete_rules, processing, 1)
            await conn.execute(complete_rules, processing, 0)
        async with system_pool.acquire() as conn:
            assert await credits.invariant_violations(conn, world.a) == []
    finally:
        await system_pool.execute(
            "UPDATE analyses SET status = 'failed', finished_at = now() WHERE id = $1 "
            "AND status = 'processing'",
            processing,
        )
