"""The global provider cap (DESIGN.md section 6): however many workers run, at most N calls
to a provider are in flight, and a slot held by a worker that died comes back by itself."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

import worker as worker_module
from cli import stack
from db import provider_slots
from db.provider_slots import BATCH, INTERACTIVE, Waiter
from providers.apify import APIFY
from tests.conftest import Account, app_client, make_settings
from tests.helpers import ledger_for_run, process_env, start_ok, wait_for


@pytest.fixture
def slow_apify() -> Iterator[str]:
    """Simulators whose scrapes take 1 s, so that calls overlap and a cap shows (0.4 s let
    a loaded machine, a fresh CI run, reach only 2 at once)."""
    port = stack.free_port()
    with tempfile.TemporaryDirectory() as home:
        proc = stack.spawn(
            stack.oslira_command("simulate", "--port", str(port)),
            {"SIM_APIFY_LATENCY_MS": "1000", "SIM_OPENAI_LATENCY_MS": "10"},
            Path(home) / "simulators.log",
        )
        try:
            stack.wait_for_port("127.0.0.1", port, 30, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stack.stop(proc)


async def _apify_stats(simulator: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=simulator) as client:
        response = await client.get("/_simulator/apify/stats")
    response.raise_for_status()
    stats: dict[str, int] = response.json()
    return stats


async def test_three_workers_never_exceed_a_cap_of_three_even_when_one_is_killed_holding_slots(
    servers, slow_apify, new_account, system_pool
):
    settings = make_settings(servers, apify_base_url=slow_apify, openai_base_url=f"{slow_apify}/v1")
    account = await new_account(credits_granted=20)
    with tempfile.TemporaryDirectory() as home:
        env = process_env(settings, home, APIFY_MAX_CONCURRENCY="3")
        workers = [
            stack.spawn(stack.oslira_command("worker"), env, Path(home) / f"worker{i}.log")
            for i in range(3)
        ]
        try:
            async with app_client(settings) as api:
                runs = [await start_ok(api, account, f"cap_{uuid4().hex[:10]}") for _ in range(18)]
                # Kill one worker while it holds a slot: its lease must come back by itself.
                held_by = await _a_worker_holding_a_slot(system_pool, workers)
                held_by.send_signal(signal.SIGKILL)
                await asyncio.to_thread(held_by.wait)
                finals = await asyncio.gather(
                    *(wait_for(api, account, run, timeout=120) for run in runs)
                )
        finally:
            for proc in workers:
                await asyncio.to_thread(stack.stop, proc)

    assert [f["status"] for f in finals] == ["complete"] * 18
    for run in runs:
        assert await ledger_for_run(system_pool, run) == [("charge", -1)]
    stats = await _apify_stats(slow_apify)
    # Three workers each run many activities at once: without the cap this reaches 18. The
    # cap is what must hold; that calls did overlap shows it was tested (how close to 3
    # they came depends on how loaded the machine is).
    assert 2 <= stats["max_in_flight"] <= 3, stats
    async with system_pool.acquire() as conn:
        assert await provider_slots.in_use(conn, APIFY) == 0  # every slot given back


async def _a_worker_holding_a_slot(
    pool: asyncpg.Pool, workers: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """One of `workers` that holds a live apify slot now."""
    by_pid = {proc.pid: proc for proc in workers}
    for _ in range(400):
        holders = await pool.fetch(
            """SELECT worker FROM provider_slots
               WHERE provider = $1 AND holder IS NOT NULL AND expires_at > now()""",
            APIFY,
        )
        for row in holders:
            pid = int(row["worker"].split("@")[0])
            if pid in by_pid:
                return by_pid[pid]
        await asyncio.sleep(0.05)
    raise AssertionError("no worker ever held a slot")


async def test_single_analyses_go_ahead_of_a_batch_backlog_that_fills_the_cap(
    servers, slow_apify, new_account, system_pool
):
    """A 24-item batch queues behind a cap of 2; then another account's analysis and the
    batch's own account's single analysis start: each takes one of the next slots to free."""
    settings = make_settings(
        servers,
        apify_base_url=slow_apify,
        openai_base_url=f"{slow_apify}/v1",
        apify_max_concurrency=2,
    )
    busy, other = await new_account(credits_granted=30), await new_account()
    stop = asyncio.Event()
    worker = asyncio.create_task(worker_module.run(settings, stop))
    try:
        async with app_client(settings) as api:
            batch = await api.post(
                "/api/leads/analyze/bulk",
                json={
                    "usernames": [f"busy_{uuid4().hex[:10]}" for _ in range(24)],
                    "analysis_type": "light",
                    "business_profile_id": str(busy.business_profile_id),
                },
                headers=busy.headers,
            )
            assert batch.status_code == 202, batch.text
            await _until_waiting(system_pool, 10)
            complete_at_start = await _complete(system_pool, busy)
            theirs = await start_ok(api, other, f"other_{uuid4().hex[:10]}")
            own = await start_ok(api, busy, f"own_{uuid4().hex[:10]}")
            finals = await asyncio.gather(
                wait_for(api, other, theirs, timeout=60), wait_for(api, busy, own, timeout=60)
            )
            complete_meanwhile = await _complete(system_pool, busy) - complete_at_start - 1
            progress = f"/api/leads/analyze/bulk/{batch.json()['batch_id']}/progress"
            for _ in range(600):
                done = (await api.get(progress, headers=busy.headers)).json()
                if done["status"] == "complete":
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await worker

    assert [f["status"] for f in finals] == ["complete", "complete"], finals
    # First come first served, each would wait for the ten or more calls queued before it;
    # in turn, they take the first slots that free: the backlog finishes at most a few items
    # meanwhile (two slots, each freeing once or twice while they wait and run).
    assert complete_meanwhile <= 6, complete_meanwhile
    assert done["status"] == "complete" and done["counts"]["complete"] == 24, done


async def _complete(pool: asyncpg.Pool, account: Account) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM analyses WHERE account_id = $1 AND status = 'complete'",
        account.account_id,
    )
    return count


async def _until_waiting(pool: asyncpg.Pool, count: int) -> None:
    async with pool.acquire() as conn:
        for _ in range(400):
            if await provider_slots.waiting(conn, APIFY) >= count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} calls waiting for a slot")


# --- the leases and their order ----------------------------------------------------------


@pytest.fixture
async def provider(system_pool) -> str:
    return f"test-{uuid4().hex[:8]}"  # a provider of its own: the real ones stay untouched


def _waiter(provider: str, account: UUID, priority: int = INTERACTIVE) -> Waiter:
    return Waiter(provider, uuid4(), account, priority, uuid4(), "test")


async def test_slots_run_out_at_the_cap_and_a_release_hands_the_slot_to_the_next_waiter(
    system_pool, provider
):
    account = uuid4()
    first, second, third = (_waiter(provider, account) for _ in range(3))
    async with system_pool.acquire() as conn, system_pool.acquire() as listener:
        await provider_slots.ensure(conn, provider, 2)
        heard: asyncio.Queue[str] = asyncio.Queue()

        def on_notify(*args: object) -> None:
            heard.put_nowait(str(args[-1]))

        await listener.add_listener(provider_slots.CHANNEL, on_notify)
        a = await provider_slots.enter(conn, first, 2, 30)
        b = await provider_slots.enter(conn, second, 2, 30)
        assert {a, b} == {0, 1}
        assert heard.empty()  # slots taken at once by their callers wake nobody
        assert await provider_slots.enter(conn, third, 2, 30) is None
        assert await provider_slots.waiting(conn, provider) == 1
        assert await provider_slots.claim(conn, [third.holder]) == {}

        assert a is not None
        await provider_slots.release(conn, provider, a, second.holder, 2, 30)  # not its holder
        assert await provider_slots.claim(conn, [third.holder]) == {}
        await provider_slots.release(conn, provider, a, first.holder, 2, 30)
        assert await asyncio.wait_for(heard.get(), 5) == provider
        assert await provider_slots.claim(conn, [third.holder]) == {third.holder: a}
        assert await provider_slots.in_use(conn, provider) == 2
        assert await provider_slots.waiting(conn, provider) == 0
        await listener.remove_listener(provider_slots.CHANNEL, on_notify)


async def test_accounts_take_turns_and_single_analyses_go_before_batch_items(system_pool, provider):
    busy, other = uuid4(), uuid4()
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, provider, 1)
        holding = _waiter(provider, busy, BATCH)
        assert await provider_slots.enter(conn, holding, 1, 30) == 0  # `busy` was served last
        # In the order they came: the busy account's batch backlog, then its own single
        # analysis, then another account's two single analyses.
        backlog = [_waiter(provider, busy, BATCH) for _ in range(3)]
        own_single = _waiter(provider, busy, INTERACTIVE)
        others = [_waiter(provider, other, INTERACTIVE) for _ in range(2)]
        for waiter in [*backlog, own_single, *others]:
            assert await provider_slots.enter(conn, waiter, 1, 30) is None

        served = []
        current = holding
        everyone = [*backlog, own_single, *others]
        for _ in everyone:
            await provider_slots.release(conn, provider, 0, current.holder, 1, 30)
            claimed = await provider_slots.claim(conn, [w.holder for w in everyone])
            assert list(claimed.values()) == [0]
            current = next(w for w in everyone if w.holder in claimed)
            served.append(current)

    assert served == [others[0], own_single, others[1], *backlog]


async def test_a_dead_waiter_is_passed_over_and_a_slot_handed_to_a_leaver_goes_on(
    system_pool, provider
):
    account = uuid4()
    holding, dead, leaver, patient = (_waiter(provider, account) for _ in range(4))
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, provider, 1)
        assert await provider_slots.enter(conn, holding, 1, 30) == 0
        assert await provider_slots.enter(conn, dead, 1, 0.1) is None  # never renewed
        assert await provider_slots.enter(conn, leaver, 1, 30) is None
        assert await provider_slots.enter(conn, patient, 1, 30) is None
        await asyncio.sleep(0.2)
        await provider_slots.release(conn, provider, 0, holding.holder, 1, 30)
        # The slot went to `leaver`, who gives up before claiming it: it goes on.
        await provider_slots.leave(conn, provider, leaver.holder, 1, 30)
        assert await provider_slots.claim(conn, [dead.holder, patient.holder]) == {
            patient.holder: 0
        }


async def test_an_expired_lease_is_handed_on_and_its_old_holder_cannot_renew_it(
    system_pool, provider
):
    account = uuid4()
    crashed, next_one = _waiter(provider, account), _waiter(provider, account)
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, provider, 1)
        assert await provider_slots.enter(conn, crashed, 1, 0.2) == 0
        assert await provider_slots.enter(conn, next_one, 1, 30) is None
        assert await provider_slots.grant(conn, provider, 1, 30) == 0  # still leased
        await asyncio.sleep(0.3)
        assert await provider_slots.in_use(conn, provider) == 0
        assert await provider_slots.grant(conn, provider, 1, 30) == 1
        assert await provider_slots.claim(conn, [next_one.holder]) == {next_one.holder: 0}
        assert not await provider_slots.renew(conn, provider, 0, crashed.holder, 30)
        assert await provider_slots.renew(conn, provider, 0, next_one.holder, 30)


async def test_twenty_callers_at_once_get_exactly_the_five_slots_and_the_rest_wait(
    settings, system_pool, provider
):
    async with system_pool.acquire() as conn:
        await provider_slots.ensure(conn, provider, 5)
    # Twenty connections of their own (the pool has five), all asking at the same moment.
    callers = await asyncio.gather(*(asyncpg.connect(settings.worker_dsn) for _ in range(20)))
    try:
        taken = await asyncio.gather(
            *(provider_slots.enter(c, _waiter(provider, uuid4()), 5, 30) for c in callers)
        )
    finally:
        await asyncio.gather(*(c.close() for c in callers))
    assert sorted(t for t in taken if t is not None) == [0, 1, 2, 3, 4]
    async with system_pool.acquire() as conn:
        assert await provider_slots.waiting(conn, provider) == 15
