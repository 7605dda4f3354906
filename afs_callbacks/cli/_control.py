"""``afs-notify stop RUN_ID``, ``afs-notify checkpoint RUN_ID`` and ``afs-notify status
RUN_ID``: command a run of this host through the store (docs/control.md).

The command is stored (``commands`` table) and the run's own process acts on it at its
next step; this command waits (``--timeout``) and says how it went. A stop asks "are you
sure?" on a terminal, and needs ``--yes`` otherwise. Every command, refused ones too, is
in the history with who asked (``user@host``), through ``cli``, and when.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from afs_callbacks.cli._common import EXIT_FAILED, EXIT_OK, UsageError
from afs_callbacks.cli._output import Output
from afs_callbacks.cli._store_check import history_path
from afs_callbacks.config import open_env, read_settings
from afs_callbacks.control.commands import STATUS, describe, find_run, issue, local_actor
from afs_callbacks.control.policy import CLI, ControlPolicy
from afs_callbacks.delivery.outbox import ACCEPTED, DONE, Command, Outbox
from afs_callbacks.tracking.asks import CHECKPOINT, STOP

#: Seconds between two looks at the command while waiting for the run.
POLL = 0.2


def command_control(args: argparse.Namespace, output: Output) -> int:
    """``stop`` / ``checkpoint``: store the command, wait for the run's answer."""
    action = STOP if args.command == "stop" else CHECKPOINT
    store, policy = _open(args)
    with store:
        state = find_run(store, args.run_id)
        run_id = state.run_id if state is not None else args.run_id
        refusal = None
        if action == STOP and not args.yes and state is not None and not state.final:
            refusal = _confirm(output, state.run_id, state.model, state.host, state.step)
        command = issue(
            store, run_id, action, source=CLI, actor=local_actor(), policy=policy, refusal=refusal
        )
        if command.finished:
            return _report(output, command, waited=False)
        command = _wait(store, command, args.timeout)
        return _report(output, command, waited=True)


def command_run_status(args: argparse.Namespace, output: Output) -> int:
    """``status RUN_ID``: the run's card, from the store, and its latest commands."""
    from afs_callbacks.channels.card_view import render_text

    store, policy = _open(args)
    with store:
        state = find_run(store, args.run_id)
        run_id = state.run_id if state is not None else args.run_id
        command = issue(store, run_id, STATUS, source=CLI, actor=local_actor(), policy=policy)
        if state is None or command.state != DONE:
            output.error(f"refused: {command.detail}")
            return EXIT_FAILED
        recent = store.commands(run_ids=[run_id], limit=6)[1:]  # the newest is this status
        if output.json_mode:
            output.json({"run": state.to_dict(), "commands": [_command_json(c) for c in recent]})
            return EXIT_OK
        output.line(render_text(state))
        if recent:
            output.line()
            output.line("Commands:")
            for earlier in recent:
                when = time.strftime("%H:%M:%S", time.localtime(earlier.created))
                output.line(f"  {when} {describe(earlier)}")
    return EXIT_OK


def _open(args: argparse.Namespace) -> tuple[Outbox, ControlPolicy]:
    path = history_path(getattr(args, "state_dir", None))
    if not path.is_file():
        raise UsageError(f"no history at {path}: no run has reported here (see --state-dir)")
    env = open_env(None, getattr(args, "env_file", None))
    policy = ControlPolicy.from_settings(read_settings(env), env)
    return Outbox(path), policy


def _confirm(output: Output, run_id: str, model: str, host: str, step: int | None) -> str | None:
    """Ask on a terminal; the reason to refuse, or None when confirmed."""
    if not sys.stdin.isatty():
        return "not confirmed: a stop needs --yes when not typed at a terminal"
    at = f" (step {step:,})" if step is not None else ""
    sys.stderr.write(f"Stop run {run_id} ({model}) on {host}{at}? It saves a checkpoint and ends. [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return None if answer in ("y", "yes") else "not confirmed at the prompt"


def _wait(store: Outbox, command: Command, timeout: float) -> Command:
    """The command once the run finished it (a stop: once the run ended), or as it is
    when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        now = store.command(command.id) or command
        if now.finished or time.monotonic() >= deadline:
            return now
        time.sleep(POLL)


def _report(output: Output, command: Command, *, waited: bool) -> int:
    if output.json_mode:
        output.json(_command_json(command))
        return EXIT_OK if command.state in (DONE, ACCEPTED) else EXIT_FAILED
    if command.state == DONE:
        output.line(f"{command.action} of run {command.run_id}: done ({command.detail})")
        return EXIT_OK
    if command.state == ACCEPTED:
        output.line(f"{command.action} of run {command.run_id}: under way ({command.detail})")
        return EXIT_OK
    if command.finished:
        output.error(f"{command.action} of run {command.run_id} {command.state}: {command.detail}")
        return EXIT_FAILED
    output.error(
        f"{command.action} of run {command.run_id} is still waiting for the run (it acts at its next"
        " step; it is ignored if the run has not taken it within AFS_CONTROL_MAX_AGE)"
    )
    return EXIT_FAILED


def _command_json(command: Command) -> dict[str, Any]:
    return {
        "id": command.id,
        "run_id": command.run_id,
        "action": command.action,
        "source": command.source,
        "actor": command.actor,
        "created": command.created,
        "updated": command.updated,
        "state": command.state,
        "detail": command.detail,
    }


__all__ = ["command_control", "command_run_status"]
