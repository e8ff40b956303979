"""`oslira dev` in a temporary state folder with zero-latency simulators, for the benches."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli import stack  # noqa: E402


@contextmanager
def dev_stack(**extra: str) -> Iterator[tuple[Path, dict[str, str], int]]:
    """Yields the state folder, the stack's environment and the `oslira dev` pid."""
    with tempfile.TemporaryDirectory(prefix="oslira-bench-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o755)  # pgserver runs postgres as its own user when root
        env = stack.isolated_dev_env(
            home, **{"SIM_APIFY_LATENCY_MS": "0", "SIM_OPENAI_LATENCY_MS": "0", **extra}
        )
        dev = stack.spawn(stack.oslira_command("dev"), env, home / "dev.out")
        try:
            deadline = time.monotonic() + 120
            while (
                not (home / "stack.env").exists()
                or "Oslira is running" not in (home / "dev.out").read_text()
            ):
                if dev.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((home / "dev.out").read_text())
                time.sleep(0.2)
            yield home, env, dev.pid
        finally:
            stack.stop(dev, timeout=30)
