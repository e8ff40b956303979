"""Operator commands for the scheduled jobs: `oslira schedules list|trigger|pause` and
`oslira ledger check`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from temporalio.service import RPCError

from cli.operators import _echo_json, fail, run_with_system_connection, settings_or_exit

schedules_app = typer.Typer(no_args_is_help=True, help="The scheduled jobs (Temporal Schedules).")
ledger_app = typer.Typer(no_args_is_help=True, help="The credit ledger.")

JobName = Annotated[str, typer.Argument(help="stuck-runs, ledger-check, cleanup or renewal")]


def _job(name: str) -> str:
    from core.schedules import JOBS_BY_NAME

    if name not in JOBS_BY_NAME:
        fail(f"no job {name!r}: the jobs are {', '.join(JOBS_BY_NAME)}")
    return name


def _with_client(work: Any) -> Any:
    from core import temporal

    settings = settings_or_exit()

    async def main() -> Any:
        client = await temporal.connect(settings)
        return await work(client, settings)

    try:
        return asyncio.run(main())
    except RuntimeError as exc:  # the client could not reach the server
        fail(f"cannot reach Temporal: {exc}")
    except RPCError as exc:  # e.g. no such schedule: `oslira migrate` creates them
        fail(f"Temporal refused: {exc} (run `oslira migrate` with TEMPORAL_ADDRESS set)")


@schedules_app.command("list")
def schedules_list() -> None:
    """Each job's schedule: its id, cron (UTC), whether it is paused, and its last runs."""
    from core import schedules

    async def work(client: Any, settings: Any) -> int:
        missing = 0
        for job in schedules.JOBS:
            handle = schedules.handle(client, settings, job.name)
            try:
                described = await handle.describe()
            except RPCError as exc:
                _echo_json({"name": job.name, "id": handle.id, "error": str(exc)})
                missing += 1
                continue
            _echo_json(
                {
                    "name": job.name,
                    "id": handle.id,
                    "cron": job.cron,
                    "paused": described.schedule.state.paused,
                    "recent": [
                        {
                            "workflow_id": action.action.workflow_id,
                            "at": action.started_at.isoformat(),
                        }
                        for action in described.info.recent_actions
                        if hasattr(action.action, "workflow_id")
                    ],
                    "next": [t.isoformat() for t in described.info.next_action_times[:1]],
                }
            )
        return missing

    if _with_client(work):
        fail("some schedules are missing: `oslira migrate` (with TEMPORAL_ADDRESS) creates them")


@schedules_app.command("trigger")
def schedules_trigger(name: JobName) -> None:
    """Run a job now, outside its schedule."""
    from core import schedules

    _job(name)

    async def work(client: Any, settings: Any) -> None:
        await schedules.handle(client, settings, name).trigger()

    _with_client(work)
    typer.echo(f"triggered {name} (skipped by Temporal if a run of it is still going)")


@schedules_app.command("pause")
def schedules_pause(
    name: JobName,
    resume: Annotated[bool, typer.Option("--resume", help="Unpause instead")] = False,
) -> None:
    """Pause a job's schedule (or resume it with --resume)."""
    from core import schedules

    _job(name)

    async def work(client: Any, settings: Any) -> None:
        handle = schedules.handle(client, settings, name)
        if resume:
            await handle.unpause(note="oslira schedules pause --resume")
        else:
            await handle.pause(note="oslira schedules pause")

    _with_client(work)
    typer.echo(f"{'resumed' if resume else 'paused'} {name}")


@ledger_app.command("check")
def ledger_check() -> None:
    """Check the ledger invariants over every account now; exits 1 on a violation."""
    from db import credits

    settings = settings_or_exit()
    violations = run_with_system_connection(settings, credits.invariant_violations)
    for violation in violations:
        typer.echo(violation)
    if violations:
        fail(f"{len(violations)} ledger invariant violation(s)")
    typer.echo("the ledger is sound")


webhooks_app = typer.Typer(no_args_is_help=True, help="Stripe webhook events.")


@webhooks_app.command("list")
def webhooks_list(
    failed: Annotated[bool, typer.Option("--failed", help="Only the dead-lettered ones")] = False,
) -> None:
    """Stored Stripe events, one JSON object per line (with --failed: those that kept failing,
    with their last error)."""
    from db import stripe_events

    settings = settings_or_exit()

    async def work(conn: Any) -> list[Any]:
        if failed:
            return list(await stripe_events.failed(conn))
        return list(await stripe_events.recent(conn))

    for row in run_with_system_connection(settings, work):
        _echo_json(dict(row))


@webhooks_app.command("replay")
def webhooks_replay(event_id: Annotated[str, typer.Argument(help="evt_...")]) -> None:
    """Process a dead-lettered event again (once: an event already applied is not applied
    twice), and wait for the outcome."""
    from temporalio.common import WorkflowIDReusePolicy

    from core.models import StripeEventInput
    from db import stripe_events
    from workflows.billing import StripeEventWorkflow, stripe_workflow_id

    settings = settings_or_exit()

    async def reopen(conn: Any) -> str | None:
        return await stripe_events.reopen(conn, event_id)

    status = run_with_system_connection(settings, reopen)
    if status is None:
        fail(f"no stored Stripe event {event_id}")
    if status in ("processed", "ignored"):
        typer.echo(f"{event_id} was already {status}: nothing to do")
        return

    async def work(client: Any, settings: Any) -> str:
        handle = await client.start_workflow(
            StripeEventWorkflow.run,
            StripeEventInput.of(event_id, settings),
            id=stripe_workflow_id(event_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
        result: str = await handle.result()
        return result

    outcome = _with_client(work)
    typer.echo(f"{event_id}: {outcome}")
    if outcome == "failed":
        raise typer.Exit(1)
