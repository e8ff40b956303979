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
