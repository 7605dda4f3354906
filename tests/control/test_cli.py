"""``afs-notify stop`` / ``checkpoint`` / ``status RUN_ID`` as a shell runs them: refusals
are explained, exit 1, and kept in the history."""

from __future__ import annotations

from pathlib import Path

from afs_callbacks.delivery.outbox import Outbox
from tests.cli.helpers import afs_notify, cli_env
from tests.control.support import commands
from tests.control.test_commands import stored_run


def history(state: Path) -> None:
    with Outbox(state / "outbox.sqlite3") as store:
        stored_run(store, "tiny-20261206-000000-abcdef", control={"accepts": ["cli"]}, step=12)


def test_control_off_in_this_shell_refuses(isolated_env: Path) -> None:
    history(isolated_env)
    result = afs_notify("checkpoint", "tiny", env=cli_env())
    assert result.returncode == 1
    assert "refused: commands through cli are off here (AFS_CONTROL does not name cli)" in result.stderr
    assert [(c.action, c.state) for c in commands(isolated_env)] == [("checkpoint", "refused")]


def test_a_stop_without_a_terminal_needs_yes(isolated_env: Path) -> None:
    history(isolated_env)
    result = afs_notify("stop", "tiny", env=cli_env(AFS_CONTROL="cli"))
    assert result.returncode == 1
    assert "a stop needs --yes when not typed at a terminal" in result.stderr
    [kept] = commands(isolated_env)
    assert kept.state == "refused" and kept.actor.count("@") == 1


def test_status_prints_the_card_and_the_commands(isolated_env: Path) -> None:
    history(isolated_env)
    afs_notify("stop", "tiny", env=cli_env(AFS_CONTROL="cli"))
    result = afs_notify("status", "tiny", env=cli_env(AFS_CONTROL="cli"))
    assert result.returncode == 0, result.stderr
    assert "🏃 tiny · running" in result.stdout and "step 12" in result.stdout
    assert "stop by " in result.stdout and "refused (not confirmed" in result.stdout


def test_an_unknown_run_is_refused(isolated_env: Path) -> None:
    history(isolated_env)
    result = afs_notify("stop", "nope", "--yes", env=cli_env(AFS_CONTROL="cli"))
    assert result.returncode == 1 and "no run 'nope'" in result.stderr
