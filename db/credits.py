"""The credit ledger (DESIGN.md section 4): every movement is a ledger row, never changed.

Each movement runs inside the caller's transaction, after taking the account's balance row
lock, so concurrent movements of one account serialise; the ledger's unique idempotency key
is the last guard, and a duplicate aborts the whole transaction rather than moving credits
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from core import metrics
from core.tiers import Tier
from db import allowances
from db.pool import Connection


class InsufficientCredits(Exception):
    """The balance (less what accepted runs will still charge) cannot cover a cost."""

    def __init__(self, balance: int, cost: int, promised: int = 0) -> None:
        promise = f", less {promised} promised to runs not yet started," if promised else ""
        super().__init__(f"The balance of {balance} credits{promise} cannot cover {cost}.")
        self.balance = balance
        self.cost = cost
        self.promised = promised


@dataclass(frozen=True)
class Movement:
    delta: int
    balance_after: int
    new: bool  # False when the idempotency key had already been used


def charge_key(run_id: UUID) -> str:
    return f"charge:{run_id}"


def refund_key(run_id: UUID) -> str:
    return f"refund:{run_id}"


def batch_charge_key(batch_id: UUID) -> str:
    return f"charge:batch:{batch_id}"


async def lock_balance(conn: Connection, account_id: UUID) -> int:
    balance = await conn.fetchval(
        "SELECT balance FROM credit_balances WHERE account_id = $1 FOR UPDATE", account_id
    )
    if balance is None:
        raise LookupError(f"account {account_id} has no credit balance")
    return int(balance)


async def _existing(conn: Connection, key: str) -> Movement | None:
    row = await conn.fetchrow(
        "SELECT delta, balance_after FROM credit_ledger WHERE idempotency_key = $1", key
    )
    if row is None:
        return None
    return Movement(delta=row["delta"], balance_after=row["balance_after"], new=False)


async def _move(
    conn: Connection,
    *,
    account_id: UUID,
    delta: int,
    kind: str,
    key: str,
    run_id: UUID | None = None,
    batch_id: UUID | None = None,
    reference: str | None = None,
    description: str = "",
) -> Movement:
    balance = await conn.fetchval(
        """UPDATE credit_balances SET balance = balance + $2, updated_at = now()
           WHERE account_id = $1 AND balance + $2 >= 0
           RETURNING balance""",
        account_id,
        delta,
    )
    if balance is None:
        current = await conn.fetchval(
            "SELECT balance FROM credit_balances WHERE account_id = $1", account_id
        )
        raise InsufficientCredits(int(current or 0), -delta)
    await conn.execute(
        """INSERT INTO credit_ledger
               (account_id, delta, balance_after, kind, run_id, batch_id, reference,
                description, idempotency_key)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        account_id,
        delta,
        balance,
        kind,
        run_id,
        batch_id,
        reference,
        description,
        key,
    )
    if kind == "charge":
        metrics.CREDITS_CHARGED.inc(-delta)
    elif kind == "refund":
        metrics.CREDITS_REFUNDED.inc(delta)
    return Movement(delta=delta, balance_after=int(balance), new=True)


async def description_of(conn: Connection, key: str) -> str | None:
    """What the movement recorded under `key` says it was for."""
    description: str | None = await conn.fetchval(
        "SELECT description FROM credit_ledger WHERE idempotency_key = $1", key
    )
    return description


async def open_balance(conn: Connection, account_id: UUID) -> None:
    await conn.execute(
        "INSERT INTO credit_balances (account_id) VALUES ($1) ON CONFLICT DO NOTHING", account_id
    )


async def grant(
    conn: Connection,
    *,
    account_id: UUID,
    amount: int,
    key: str,
    kind: str = "grant",
    reference: str | None = None,
    description: str = "",
) -> Movement:
    """Adds credits once per key (purchases, grants, renewals)."""
    if amount <= 0:
        raise ValueError("a grant adds a positive number of credits")
    await lock_balance(conn, account_id)
    if (done := await _existing(conn, key)) is not None:
        return done
    return await _move(
        conn,
        account_id=account_id,
        delta=amount,
        kind=kind,
        key=key,
        reference=reference,
        description=description,
    )


async def charge_run(conn: Connection, *, account_id: UUID, run_id: UUID, cost: int) -> Movement:
    """Takes a run's cost once; a repeat for the same run changes nothing."""
    await lock_balance(conn, account_id)
    if (done := await _existing(conn, charge_key(run_id))) is not None:
        return done
    return await _move(
        conn,
        account_id=account_id,
        delta=-cost,
        kind="charge",
        key=charge_key(run_id),
        run_id=run_id,
        description="analysis",
    )


async def refund_run(conn: Connection, *, account_id: UUID, run_id: UUID) -> Movement | None:
    """Gives back what the run was charged, once; None when it was never charged. A run
    covered by a free allowance gives its unit back instead.

    An item of a batch was paid by its batch's charge: once the batch was charged, it gets
    back its own cost.
    """
    await lock_balance(conn, account_id)
    if await allowances.funded(conn, [run_id]):
        # Covered by a free allowance: it gets its unit back, and was charged nothing.
        await allowances.give_back(conn, [run_id])
        return None
    run = await conn.fetchrow(
        "SELECT batch_id, credits_cost FROM analyses WHERE id = $1 AND account_id = $2",
        run_id,
        account_id,
    )
    batch_id: UUID | None = run["batch_id"] if run else None
    if batch_id is None:
        charge = await _existing(conn, charge_key(run_id))
        if charge is None:
            return None
        amount = -charge.delta
    else:
        assert run is not None
        if await _existing(conn, batch_charge_key(batch_id)) is None:
            return None
        amount = int(run["credits_cost"])
    if (done := await _existing(conn, refund_key(run_id))) is not None:
        return done
    return await _move(
        conn,
        account_id=account_id,
        delta=amount,
        kind="refund",
        key=refund_key(run_id),
        run_id=run_id,
        batch_id=batch_id,
        description="batch item refund" if batch_id else "analysis refund",
    )


async def charge_batch(
    conn: Connection, *, account_id: UUID, batch_id: UUID, amount: int
) -> Movement:
    """Takes a batch's whole cost once, up front; a repeat changes nothing."""
    await lock_balance(conn, account_id)
    if (done := await _existing(conn, batch_charge_key(batch_id))) is not None:
        return done
    return await _move(
        conn,
        account_id=account_id,
        delta=-amount,
        kind="charge",
        key=batch_charge_key(batch_id),
        batch_id=batch_id,
        description="batch analysis",
    )


async def run_charged(conn: Connection, run_id: UUID) -> bool:
    return await _existing(conn, charge_key(run_id)) is not None


async def batch_charged(conn: Connection, batch_id: UUID) -> bool:
    return await _existing(conn, batch_charge_key(batch_id)) is not None


async def refund_items(
    conn: Connection, *, account_id: UUID, batch_id: UUID, run_ids: list[UUID], item_cost: int
) -> int:
    """Refunds the items of a charged batch that never ran, each once, in one statement per
    step rather than one movement per item (a cancelled batch may leave thousands); items
    covered by a free allowance give their unit back instead. Returns the credits given
    back."""
    await lock_balance(conn, account_id)
    free = await allowances.funded(conn, run_ids)
    if free:
        await allowances.give_back(conn, list(free))
        run_ids = [r for r in run_ids if r not in free]
    if not run_ids or await _existing(conn, batch_charge_key(batch_id)) is None:
        return 0
    owed: list[UUID] = [
        row["id"]
        for row in await conn.fetch(
            """SELECT item.id FROM unnest($1::uuid[]) AS item (id)
               WHERE NOT EXISTS (SELECT 1 FROM credit_ledger l
                                 WHERE l.idempotency_key = 'refund:' || item.id)
               ORDER BY item.id""",
            run_ids,
        )
    ]
    if not owed:
        return 0
    total = item_cost * len(owed)
    balance = await conn.fetchval(
        """UPDATE credit_balances SET balance = balance + $2, updated_at = now()
           WHERE account_id = $1 RETURNING balance""",
        account_id,
        total,
    )
    # Each row's balance_after is the balance once it and the rows before it have landed.
    await conn.execute(
        """INSERT INTO credit_ledger
               (account_id, delta, balance_after, kind, run_id, batch_id, description,
                idempotency_key)
           SELECT $1, $4::bigint, $5::bigint - ($6::bigint - item.n) * $4, 'refund', item.id, $2,
                  'batch item refund', 'refund:' || item.id
           FROM unnest($3::uuid[]) WITH ORDINALITY AS item (id, n)
           ORDER BY item.n""",
        account_id,
        batch_id,
        owed,
        item_cost,
        balance,
        len(owed),
    )
    metrics.CREDITS_REFUNDED.inc(total)
    return total


async def lock_promises(conn: Connection, account_id: UUID) -> None:
    """Serialises, until the transaction ends, the API's promises of one account's credits.

    An advisory lock rather than the balance row's lock: the API role may not lock rows it
    cannot update, and it must not hold up the workers' charges.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('credits:' || $1::uuid, 0))", account_id
    )


@dataclass(frozen=True)
class Available:
    balance: int
    promised: int  # the cost of runs and batches accepted but not yet charged

    @property
    def credits(self) -> int:
        return self.balance - self.promised


async def available(conn: Connection, account_id: UUID) -> Available:
    """The balance less what accepted runs and batches will still charge, read in one
    snapshot (a run or a batch leaves `pending` in the transaction that charges it). Runs
    and batch items promised to a free allowance promise no credits."""
    row = await conn.fetchrow(
        """SELECT coalesce((SELECT balance FROM credit_balances WHERE account_id = $1), 0)
                      AS balance,
                  coalesce((SELECT sum(credits_cost) FROM analyses
                            WHERE account_id = $1 AND status = 'pending'
                              AND cancel_requested_at IS NULL AND batch_id IS NULL
                              AND allowance_month IS NULL), 0)
                  + coalesce((SELECT sum((total - free_items) * credits_cost) FROM batches
                              WHERE account_id = $1 AND status = 'pending'
                                AND cancel_requested_at IS NULL), 0) AS promised""",
        account_id,
    )
    assert row is not None
    return Available(balance=int(row["balance"]), promised=int(row["promised"]))


async def balance(conn: Connection, account_id: UUID) -> int:
    value = await conn.fetchval(
        "SELECT balance FROM credit_balances WHERE account_id = $1", account_id
    )
    return int(value or 0)


LEDGER_KINDS = ("purchase", "grant", "renewal", "charge", "refund", "adjustment")


@dataclass(frozen=True)
class LedgerFilter:
    """None leaves a filter out; `since` is inclusive, `until` exclusive."""

    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    run_id: UUID | None = None
    batch_id: UUID | None = None


async def transactions_page(
    conn: Connection,
    account_id: UUID,
    *,
    limit: int,
    offset: int,
    where: LedgerFilter = LedgerFilter(),
) -> tuple[int, list[dict[str, Any]]]:
    condition = """account_id = $1 AND ($2::text IS NULL OR kind = $2)
        AND ($3::timestamptz IS NULL OR created_at >= $3)
        AND ($4::timestamptz IS NULL OR created_at < $4)
        AND ($5::uuid IS NULL OR run_id = $5) AND ($6::uuid IS NULL OR batch_id = $6)"""
    args = (account_id, where.kind, where.since, where.until, where.run_id, where.batch_id)
    total = await conn.fetchval(f"SELECT count(*) FROM credit_ledger WHERE {condition}", *args)
    rows = await conn.fetch(
        f"""SELECT id, delta, balance_after, kind, run_id, batch_id, reference, description,
                   created_at
            FROM credit_ledger WHERE {condition}
            ORDER BY id DESC LIMIT $7 OFFSET $8""",
        *args,
        limit,
        offset,
    )
    return int(total), [dict(r) for r in rows]


@dataclass(frozen=True)
class TierUsage:
    runs: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    credits_spent: int = 0
    credits_refunded: int = 0
    allowance_used: int = 0


async def usage(conn: Connection, account_id: UUID, month: date) -> dict[str, TierUsage]:
    """The tenant's month (UTC) by tier: runs accepted in it by where they are now, credits
    charged and refunded in it (a batch's charge counts for its tier), and units of that
    month's free allowance kept (drawn and not given back)."""
    rows = await conn.fetch(
        """WITH bounds AS (
               SELECT $1::date::timestamp AT TIME ZONE 'UTC' AS lo,
                      ($1::date + interval '1 month')::timestamp AT TIME ZONE 'UTC' AS hi),
           runs AS (
               SELECT a.analysis_type AS tier, count(*) AS runs,
                      count(*) FILTER (WHERE a.status = 'complete') AS complete,
                      count(*) FILTER (WHERE a.status = 'failed') AS failed,
                      count(*) FILTER (WHERE a.status = 'cancelled') AS cancelled,
                      count(*) FILTER (WHERE a.status IN ('pending', 'processing')) AS in_flight
               FROM analyses a, bounds
               WHERE a.account_id = $3
                 AND a.created_at >= bounds.lo AND a.created_at < bounds.hi
               GROUP BY a.analysis_type),
           money AS (
               SELECT coalesce(a.analysis_type, b.analysis_type) AS tier,
                      coalesce(sum(-l.delta) FILTER (WHERE l.kind = 'charge'), 0) AS spent,
                      coalesce(sum(l.delta) FILTER (WHERE l.kind = 'refund'), 0) AS refunded
               FROM credit_ledger l
               CROSS JOIN bounds
               LEFT JOIN analyses a ON a.id = l.run_id
               LEFT JOIN batches b ON b.id = l.batch_id AND l.run_id IS NULL
               WHERE l.account_id = $3 AND l.kind IN ('charge', 'refund')
                 AND l.created_at >= bounds.lo AND l.created_at < bounds.hi
               GROUP BY 1),
           units AS (
               SELECT action AS tier, count(*) FILTER (WHERE returned_at IS NULL) AS used
               FROM allowance_uses WHERE account_id = $3 AND month = $1 GROUP BY action)
           SELECT t.tier, coalesce(r.runs, 0) AS runs, coalesce(r.complete, 0) AS complete,
                  coalesce(r.failed, 0) AS failed, coalesce(r.cancelled, 0) AS cancelled,
                  coalesce(r.in_flight, 0) AS in_flight, coalesce(m.spent, 0) AS spent,
                  coalesce(m.refunded, 0) AS refunded, coalesce(u.used, 0) AS used
           FROM unnest($2::text[]) AS t (tier)
           LEFT JOIN runs r ON r.tier = t.tier
           LEFT JOIN money m ON m.tier = t.tier
           LEFT JOIN units u ON u.tier = t.tier""",
        month,
        [tier.value for tier in Tier],
        account_id,
    )
    return {
        row["tier"]: TierUsage(
            runs=row["runs"],
            complete=row["complete"],
            failed=row["failed"],
            cancelled=row["cancelled"],
            in_flight=row["in_flight"],
            credits_spent=int(row["spent"]),
            credits_refunded=int(row["refunded"]),
            allowance_used=row["used"],
        )
        for row in rows
    }


async def invariant_violations(conn: Connection, account_id: UUID | None = None) -> list[str]:
    """Section 4's invariants; an empty list means the ledger is sound."""
    checks = {
        "balance differs from the sum of the ledger": """
            SELECT b.account_id::text AS subject,
                   b.balance || ' <> ' || coalesce(sum(l.delta), 0) AS detail
            FROM credit_balances b LEFT JOIN credit_ledger l USING (account_id)
            WHERE $1::uuid IS NULL OR b.account_id = $1
            GROUP BY b.account_id, b.balance
            HAVING b.balance <> coalesce(sum(l.delta), 0)""",
        "negative balance": """
            SELECT account_id::text AS subject, balance::text AS detail FROM credit_balances
            WHERE balance < 0 AND ($1::uuid IS NULL OR account_id = $1)""",
        "run charged or refunded more than once": """
            SELECT run_id::text AS subject, kind || ' x' || count(*) AS detail
            FROM credit_ledger
            WHERE kind IN ('charge', 'refund') AND run_id IS NOT NULL
              AND ($1::uuid IS NULL OR account_id = $1)
            GROUP BY run_id, kind HAVING count(*) > 1""",
        "batch charged more than once": """
            SELECT batch_id::text AS subject, 'charge x' || count(*) AS detail
            FROM credit_ledger
            WHERE kind = 'charge' AND run_id IS NULL AND ($1::uuid IS NULL OR account_id = $1)
            GROUP BY batch_id HAVING count(*) > 1""",
        "batch charged other than its items' cost": """
            SELECT b.id::text AS subject,
                   -c.delta || ' vs ' || (b.total - f.drawn) * b.credits_cost AS detail
            FROM batches b
            JOIN credit_ledger c ON c.batch_id = b.id AND c.kind = 'charge' AND c.run_id IS NULL
            CROSS JOIN LATERAL (
                SELECT count(*) AS drawn FROM allowance_uses u
                JOIN analyses a ON a.id = u.run_id WHERE a.batch_id = b.id) f
            WHERE -c.delta <> (b.total - f.drawn) * b.credits_cost
              AND ($1::uuid IS NULL OR b.account_id = $1)""",
        "batch with other than its total of items": """
            SELECT b.id::text AS subject, count(a.id) || ' vs ' || b.total AS detail
            FROM batches b LEFT JOIN analyses a ON a.batch_id = b.id
            WHERE $1::uuid IS NULL OR b.account_id = $1
            GROUP BY b.id, b.total HAVING count(a.id) <> b.total""",
        "refund without charge or of another amount": """
            SELECT r.run_id::text AS subject, r.delta || ' vs ' || coalesce(c.delta, 0) AS detail
            FROM credit_ledger r
            LEFT JOIN credit_ledger c ON c.run_id = r.run_id AND c.kind = 'charge'
            WHERE r.kind = 'refund' AND r.batch_id IS NULL
              AND (c.id IS NULL OR c.delta <> -r.delta)
              AND ($1::uuid IS NULL OR r.account_id = $1)
            UNION ALL
            SELECT r.run_id::text, r.delta || ' vs item cost ' || coalesce(b.credits_cost, 0)
            FROM credit_ledger r
            JOIN analyses a ON a.id = r.run_id
            LEFT JOIN batches b ON b.id = r.batch_id AND b.id = a.batch_id
                 AND EXISTS (SELECT 1 FROM credit_ledger c
                             WHERE c.batch_id = b.id AND c.kind = 'charge' AND c.run_id IS NULL)
            WHERE r.kind = 'refund' AND r.batch_id IS NOT NULL
              AND (b.id IS NULL OR r.delta <> b.credits_cost)
              AND ($1::uuid IS NULL OR r.account_id = $1)""",
        "failed or cancelled run charged but not refunded": """
            SELECT a.id::text AS subject, a.status AS detail FROM analyses a
            WHERE a.status IN ('failed', 'cancelled')
              AND (EXISTS (SELECT 1 FROM credit_ledger c
                           WHERE c.run_id = a.id AND c.kind = 'charge')
                   OR EXISTS (SELECT 1 FROM credit_ledger c
                              WHERE c.batch_id = a.batch_id AND c.kind = 'charge'
                                AND c.run_id IS NULL))
              AND NOT EXISTS (SELECT 1 FROM credit_ledger r
                              WHERE r.run_id = a.id AND r.kind = 'refund')
              AND NOT EXISTS (SELECT 1 FROM allowance_uses u WHERE u.run_id = a.id)
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        # A run the rule-based fallback completed is refunded (or its free unit given back):
        # it did not get the AI analysis that was paid for.
        "complete run refunded": """
            SELECT a.id::text AS subject, a.status AS detail FROM analyses a
            WHERE a.status = 'complete' AND a.engine IS DISTINCT FROM 'rules'
              AND EXISTS (SELECT 1 FROM credit_ledger r WHERE r.run_id = a.id AND r.kind = 'refund')
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "run completed by the rules fallback, charged but not refunded": """
            SELECT a.id::text AS subject, a.credits_charged::text AS detail FROM analyses a
            WHERE a.status = 'complete' AND a.engine = 'rules'
              AND (a.credits_charged <> 0
                   OR ((EXISTS (SELECT 1 FROM credit_ledger c
                                WHERE c.run_id = a.id AND c.kind = 'charge')
                        OR EXISTS (SELECT 1 FROM credit_ledger c
                                   WHERE c.batch_id = a.batch_id AND c.kind = 'charge'
                                     AND c.run_id IS NULL))
                       AND NOT EXISTS (SELECT 1 FROM allowance_uses u WHERE u.run_id = a.id)
                       AND NOT EXISTS (SELECT 1 FROM credit_ledger r
                                       WHERE r.run_id = a.id AND r.kind = 'refund'))
                   OR EXISTS (SELECT 1 FROM allowance_uses u
                              WHERE u.run_id = a.id AND u.returned_at IS NULL))
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "complete run not charged its cost": """
            SELECT a.id::text AS subject,
                   coalesce(-c.delta, 0) || ' vs ' || a.credits_cost AS detail
            FROM analyses a
            LEFT JOIN credit_ledger c ON c.run_id = a.id AND c.kind = 'charge'
            WHERE a.status = 'complete' AND a.batch_id IS NULL
              AND coalesce(-c.delta, 0) <> a.credits_cost
              AND NOT EXISTS (SELECT 1 FROM allowance_uses u WHERE u.run_id = a.id)
              AND ($1::uuid IS NULL OR a.account_id = $1)
            UNION ALL
            SELECT a.id::text, 'item of an uncharged batch' FROM analyses a
            WHERE a.status = 'complete' AND a.batch_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM credit_ledger c
                              WHERE c.batch_id = a.batch_id AND c.kind = 'charge'
                                AND c.run_id IS NULL)
              AND NOT EXISTS (SELECT 1 FROM allowance_uses u WHERE u.run_id = a.id)
              AND ($1::uuid IS NULL OR a.account_id = $1)
            UNION ALL
            SELECT a.id::text, 'free, but charged ' || a.credits_charged FROM analyses a
            JOIN allowance_uses u ON u.run_id = a.id
            WHERE a.status = 'complete' AND a.credits_charged <> 0
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "allowance units drawn beyond the allowance": """
            SELECT account_id || ' ' || month || ' ' || action AS subject,
                   count(*) || ' kept vs ' || max(allowance) AS detail
            FROM allowance_uses
            WHERE returned_at IS NULL AND ($1::uuid IS NULL OR account_id = $1)
            GROUP BY account_id, month, action HAVING count(*) > max(allowance)""",
        "allowance unit kept by a failed or cancelled run, or given back by a complete one": """
            SELECT a.id::text AS subject, a.status AS detail FROM analyses a
            JOIN allowance_uses u ON u.run_id = a.id
            WHERE ((a.status IN ('failed', 'cancelled') AND u.returned_at IS NULL)
                   OR (a.status = 'complete' AND u.returned_at IS NOT NULL
                       AND a.engine IS DISTINCT FROM 'rules'))
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "run both drew an allowance unit and was charged credits": """
            SELECT u.run_id::text AS subject, 'charge ' || l.delta AS detail
            FROM allowance_uses u JOIN credit_ledger l ON l.run_id = u.run_id
            WHERE l.kind IN ('charge', 'refund') AND ($1::uuid IS NULL OR u.account_id = $1)""",
        "batch item counts differ from its items": """
            SELECT coalesce(a.batch_id, c.batch_id)::text AS subject,
                   coalesce(a.status, c.status) || ' ' || coalesce(c.items, 0) || ' vs '
                   || coalesce(a.n, 0) AS detail
            FROM (SELECT batch_id, status, count(*) AS n FROM analyses
                  WHERE batch_id IS NOT NULL AND ($1::uuid IS NULL OR account_id = $1)
                  GROUP BY batch_id, status) a
            FULL JOIN (SELECT * FROM batch_counts
                       WHERE $1::uuid IS NULL OR account_id = $1) c
                   ON c.batch_id = a.batch_id AND c.status = a.status
            WHERE coalesce(c.items, 0) <> coalesce(a.n, 0)""",
        "batch finished with items in flight": """
            SELECT b.id::text AS subject, b.status || ', ' || count(*) || ' in flight' AS detail
            FROM batches b JOIN analyses a ON a.batch_id = b.id
            WHERE b.status IN ('complete', 'cancelled', 'failed')
              AND a.status IN ('pending', 'processing')
              AND ($1::uuid IS NULL OR b.account_id = $1)
            GROUP BY b.id, b.status""",
    }
    violations = []
    for name, sql in checks.items():
        for row in await conn.fetch(sql, account_id):
            violations.append(f"{name}: {row['subject']} ({row['detail']})")
    return violations
