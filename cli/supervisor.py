"""Keeps `oslira dev`'s children running: one that dies is started again, after a pause that
grows while it keeps dying (1, 2, 4 ... 30 s), with a line in the log each time; stopping
stops them all."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cli import stack

log = logging.getLogger("oslira.dev")

# A child that ran this long before dying is restarted at once, its count forgotten.
HEALTHY_AFTER = 60.0
MAX_PAUSE = 30.0


@dataclass
class Child:
    name: str
    command: list[str]
    env: Mapping[str, str]
    log_file: Path
    proc: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self, name: str, command: list[str], env: Mapping[str, str], log_file: Path
    ) -> subprocess.Popen[bytes]:
        child = Child(name, command, env, log_file, stack.spawn(command, env, log_file))
        self.children.append(child)
        return child.proc

    def watch(self) -> None:
        """Restarts the children that have died, each when its pause is over."""
        now = time.monotonic()
        for child in self.children:
            if child.proc.poll() is None:
                continue
            if child.restart_at is None:
                if now - child.started_at >= HEALTHY_AFTER:
                    child.failures = 0
                pause = min(MAX_PAUSE, 2.0**child.failures)
                child.failures += 1
                child.restart_at = now + pause
                log.warning(
                    "%s exited with %s; restarting it in %.0f s (restart %d; see %s)",
                    child.name,
                    child.proc.returncode,
                    pause,
                    child.failures,
                    child.log_file,
                )
            if now >= child.restart_at:
                # What the dead child started (uvicorn's worker processes) goes with it.
                stack.signal_group(child.proc, signal.SIGKILL)
                child.proc = stack.spawn(child.command, child.env, child.log_file)
                child.started_at, child.restart_at = now, None
                log.info("%s restarted (pid %d)", child.name, child.proc.pid)

    def stop(self, last: tuple[str, ...] = ()) -> None:
        """Stops every child, those named in `last` after the others: well within 15 s."""
        first = [c.proc for c in self.children if c.name not in last]
        stack.stop_all(first, timeout=8)
        stack.stop_all([c.proc for c in self.children if c.name in last], timeout=2)
