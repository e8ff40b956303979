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


async def _lock_balance(conn: Connection, account_id: UUID) -> int:
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
               (account_id, delta, balance_after, kind, run_id, reference, description,
                idempotency_key)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        account_id,
        delta,
        balance,
        kind,
        run_id,
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
    await _lock_balance(conn, account_id)
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
    await _lock_balance(conn, account_id)
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
    """Gives back what the run was charged, once; None when it was never charged."""
    await _lock_balance(conn, account_id)
    charge = await _existing(conn, charge_key(run_id))
    if charge is None:
        return None
    if (done := await _existing(conn, refund_key(run_id))) is not None:
        return done
    return await _move(
        conn,
        account_id=account_id,
        delta=-charge.delta,
        kind="refund",
        key=refund_key(run_id),
        run_id=run_id,
        description="analysis refund",
    )


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
    promised: int  # the cost of runs accepted but not yet charged

    @property
    def credits(self) -> int:
        return self.balance - self.promised


async def available(conn: Connection, account_id: UUID) -> Available:
    """The balance less what accepted runs will still charge, read in one snapshot (a run
    leaves `pending` in the transaction that charges it)."""
    row = await conn.fetchrow(
        """SELECT coalesce((SELECT balance FROM credit_balances WHERE account_id = $1), 0)
                      AS balance,
                  coalesce((SELECT sum(credits_cost) FROM analyses
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
            WHERE kind IN ('charge', 'refund') AND ($1::uuid IS NULL OR account_id = $1)
            GROUP BY run_id, kind HAVING count(*) > 1""",
        "refund without charge or of another amount": """
            SELECT r.run_id::text AS subject, r.delta || ' vs ' || coalesce(c.delta, 0) AS detail
            FROM credit_ledger r
            LEFT JOIN credit_ledger c ON c.run_id = r.run_id AND c.kind = 'charge'
            WHERE r.kind = 'refund' AND (c.id IS NULL OR c.delta <> -r.delta)
              AND ($1::uuid IS NULL OR r.account_id = $1)""",
        "failed or cancelled run charged but not refunded": """
            SELECT a.id::text AS subject, a.status AS detail FROM analyses a
            WHERE a.status IN ('failed', 'cancelled')
              AND EXISTS (SELECT 1 FROM credit_ledger c WHERE c.run_id = a.id AND c.kind = 'charge')
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
            WHERE a.status = 'complete' AND coalesce(-c.delta, 0) <> a.credits_cost
              AND ($1::uuid IS NULL OR a.account_id = $1)""",
    }
    violations = []
    for name, sql in checks.items():
        for row in await conn.fetch(sql, account_id):
            violations.append(f"{name}: {row['subject']} ({row['detail']})")
    return violations
