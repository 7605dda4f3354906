"""What the run-control tests share: commanding a live run from outside with the real
``afs-notify`` (a subprocess, as a person's shell would), and reading the commands table."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from afs_callbacks.delivery.outbox import Command, Outbox
from afs_callbacks.runstate import commands_from
from tests.cli.helpers import afs_notify, cli_env
from tests.dashboard.support import wait_for


def live_run(state_dir: Path, *, timeout: float = 60.0) -> str:
    """The id of the run training under ``state_dir`` once it takes commands."""

    def found() -> str | None:
        path = state_dir / "outbox.sqlite3"
        if not path.is_file():
            return None
        with Outbox(path, read_only=True) as store:
            for state in store.runs(limit=5):
                if not state.final and commands_from(state) and (state.step or 0) > 0:
                    return state.run_id
        return None

    return str(wait_for(found, timeout=timeout, interval=0.1, what="a live run that takes commands"))


def commands(state_dir: Path, run_id: str | None = None) -> list[Command]:
    """The commands table, oldest first."""
    with Outbox(state_dir / "outbox.sqlite3") as store:
        found = store.commands(run_ids=None if run_id is None else [run_id], limit=None)
    return sorted(found, key=lambda c: c.created)


class Commander(threading.Thread):
    """Runs ``afs-notify`` commands against the live run of ``state_dir`` while the test's
    main thread trains: ``steps`` are argument lists with ``{run}`` for the run's id; each
    waits for the one before. ``results`` holds each finished process."""

    def __init__(self, state_dir: Path, steps: Sequence[Sequence[str]], **env: str) -> None:
        super().__init__(name="test-commander", daemon=True)
        self.state_dir = state_dir
        self.steps = steps
        self.env = cli_env(AFS_STATE_DIR=str(state_dir), AFS_CONTROL="cli", **env)
        self.results: list[subprocess.CompletedProcess[str]] = []
        self.error: BaseException | None = None
        self.run_id: str | None = None

    def run(self) -> None:
        try:
            self.run_id = live_run(self.state_dir)
            for step in self.steps:
                args = [part.replace("{run}", self.run_id) for part in step]
                self.results.append(afs_notify(*args, env=self.env, timeout=90))
        except BaseException as error:  # reported by the test on join
            self.error = error

    def finish(self, timeout: float = 120.0) -> list[subprocess.CompletedProcess[str]]:
        """Wait for every command; raise what went wrong in the thread."""
        self.join(timeout)
        assert not self.is_alive(), "the commands did not finish"
        if self.error is not None:
            raise self.error
        return self.results
