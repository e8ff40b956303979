"""The credit ledger (DESIGN.md section 4): every movement is a ledger row, never changed.

Each movement runs inside the caller's transaction, after taking the account's balance row
lock, so concurrent movements of one account serialise; the ledger's unique idempotency key
is the last guard, and a duplicate aborts the whole transaction rather than moving credits
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

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
    """Gives back what the run was charged, once; None when it was never charged.

    An item of a batch was paid by its batch's charge: once the batch was charged, it gets
    back its own cost.
    """
    await lock_balance(conn, account_id)
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


async def batch_charged(conn: Connection, batch_id: UUID) -> bool:
    return await _existing(conn, batch_charge_key(batch_id)) is not None


async def refund_items(
    conn: Connection, *, account_id: UUID, batch_id: UUID, run_ids: list[UUID], item_cost: int
) -> int:
    """Refunds the items of a charged batch that never ran, each once, in one statement per
    step rather than one movement per item (a cancelled batch may leave thousands). Returns
    the credits given back."""
    await lock_balance(conn, account_id)
    if await _existing(conn, batch_charge_key(batch_id)) is None:
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
    snapshot (a run or a batch leaves `pending` in the transaction that charges it)."""
    row = await conn.fetchrow(
        """SELECT coalesce((SELECT balance FROM credit_balances WHERE account_id = $1), 0)
                      AS balance,
                  coalesce((SELECT sum(credits_cost) FROM analyses
                            WHERE account_id = $1 AND status = 'pending'
                              AND cancel_requested_at IS NULL AND batch_id IS NULL), 0)
                  + coalesce((SELECT sum(total * credits_cost) FROM batches
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


async def transactions_page(
    conn: Connection, account_id: UUID, *, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    total = await conn.fetchval(
        "SELECT count(*) FROM credit_ledger WHERE account_id = $1", account_id
    )
    rows = await conn.fetch(
        """SELECT id, delta, balance_after, kind, run_id, reference, description, created_at
           FROM credit_ledger WHERE account_id = $1
           ORDER BY id DESC LIMIT $2 OFFSET $3""",
        account_id,
        limit,
        offset,
    )
    return int(total), [dict(r) for r in rows]


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
            SELECT b.id::text AS subject, -c.delta || ' vs ' || b.total * b.credits_cost AS detail
            FROM batches b
            JOIN credit_ledger c ON c.batch_id = b.id AND c.kind = 'charge' AND c.run_id IS NULL
            WHERE -c.delta <> b.total * b.credits_cost
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
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "complete run refunded": """
            SELECT a.id::text AS subject, a.status AS detail FROM analyses a
            WHERE a.status = 'complete'
              AND EXISTS (SELECT 1 FROM credit_ledger r WHERE r.run_id = a.id AND r.kind = 'refund')
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
        "complete run not charged its cost": """
            SELECT a.id::text AS subject,
                   coalesce(-c.delta, 0) || ' vs ' || a.credits_cost AS detail
            FROM analyses a
            LEFT JOIN credit_ledger c ON c.run_id = a.id AND c.kind = 'charge'
            WHERE a.status = 'complete' AND a.batch_id IS NULL
              AND coalesce(-c.delta, 0) <> a.credits_cost
              AND ($1::uuid IS NULL OR a.account_id = $1)
            UNION ALL
            SELECT a.id::text, 'item of an uncharged batch' FROM analyses a
            WHERE a.status = 'complete' AND a.batch_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM credit_ledger c
                              WHERE c.batch_id = a.batch_id AND c.kind = 'charge'
                                AND c.run_id IS NULL)
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
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
