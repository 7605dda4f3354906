"""The one path every surface takes to ask a run something: :func:`issue`.

``afs-notify stop``, the dashboard's buttons, a Telegram tap and a Slack click all call
:func:`issue`, which checks the command against the policy and the run and stores it in
the ``commands`` table, accepted or refused, with who asked, from where and when. What is
accepted waits there (``pending``) for the run's own process, the only one that acts on
it (:mod:`afs_callbacks.control.run`). A stop asked from a chat or the dashboard waits for
a confirmation first (``unconfirmed``, then :func:`confirm` within the age limit).

Nothing a command carries is ever run or opened: the action is one of three fixed words,
the run is looked up by id, and a checkpoint's path is chosen by the run's framework,
never by the asker.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from afs_callbacks.control.policy import RULE, ControlPolicy
from afs_callbacks.delivery.outbox import (
    CANCELLED,
    DONE,
    EXPIRED,
    QUEUED,
    REFUSED,
    UNCONFIRMED,
    Command,
    Outbox,
)
from afs_callbacks.runstate import RunState, commands_from, run_token
from afs_callbacks.tracking.asks import CHECKPOINT, STOP

STATUS = "status"
#: What a surface can ask.
ACTIONS = (STOP, CHECKPOINT, STATUS)


def this_host() -> str:
    """The host name runs are keyed by (the one a run's state records)."""
    return socket.gethostname()


def local_actor() -> str:
    """``user@host`` of this process (who typed ``afs-notify stop``)."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = f"uid {os.getuid()}"
    return f"{user}@{this_host()}"


def accepts(state: RunState | None) -> tuple[str, ...]:
    """The surfaces a run takes commands from, as its own process published them."""
    return () if state is None else commands_from(state)


def issue(
    store: Outbox,
    run_id: str,
    action: str,
    *,
    source: str,
    actor: str,
    policy: ControlPolicy,
    confirmed: bool = True,
    refusal: str | None = None,
    reply: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Command:
    """Ask run ``run_id`` for ``action`` through ``source`` on behalf of ``actor``; the
    command is stored and returned, ``pending`` (or ``unconfirmed`` when not
    ``confirmed``), ``done`` for a status, or ``refused`` with the reason in ``detail``.

    Refused: an unknown action, a surface this process has not enabled, a run that is not
    in the store, trains on another host, has ended, or does not take commands from this
    surface; or the caller's own ``refusal`` (a chat identity not allowed, no
    confirmation) — so that every attempt is in the history.
    """
    now = time.time() if now is None else now
    state = store.run(run_id)
    refusal = refusal or _refusal(state, run_id, action, source, policy)
    if refusal is not None:
        status = REFUSED
    elif action == STATUS:
        status = DONE
    else:
        status = QUEUED if confirmed else UNCONFIRMED
    command = Command(
        id=uuid.uuid4().hex,
        run_id=run_id,
        action=action if action in ACTIONS else "unknown",
        source=source,
        actor=actor,
        created=now,
        updated=now,
        state=status,
        detail=refusal or ("the run's card" if action == STATUS else ""),
        host=state.host if state is not None else "",
        reply=dict(reply or {}),
    )
    store.add_command(command)
    return command


def confirm(store: Outbox, command_id: str, *, actor: str, policy: ControlPolicy) -> Command | None:
    """The confirmation tap of an ``unconfirmed`` stop: ``pending`` when it comes from the
    person who asked, within the age limit; else ``refused`` or ``expired``. Returns the
    command as it is now (None: no such command)."""
    command = store.command(command_id)
    if command is None or command.state != UNCONFIRMED:
        return command
    if command.actor != actor:
        return command  # someone else's question: only its asker confirms it
    if time.time() - command.created > policy.max_age:
        detail = f"confirmed after more than {policy.max_age:g} s"
        store.update_command(command_id, EXPIRED, detail, expect=[UNCONFIRMED])
    else:
        store.update_command(command_id, QUEUED, "confirmed", expect=[UNCONFIRMED])
    return store.command(command_id)


def cancel(store: Outbox, command_id: str, *, actor: str) -> Command | None:
    """The asker's "Cancel" on a stop waiting for its confirmation."""
    command = store.command(command_id)
    if command is not None and command.state == UNCONFIRMED and command.actor == actor:
        store.update_command(command_id, CANCELLED, f"cancelled by {actor}", expect=[UNCONFIRMED])
        return store.command(command_id)
    return command


def find_run(store: Outbox, text: str, *, host: str | None = None) -> RunState | None:
    """The run named by ``text``: its id, its :func:`run_token`, or a part of the id that
    only one live run of ``host`` (default: this one) has."""
    text = text.strip()
    if not text:
        return None
    exact = store.run(text)
    if exact is not None:
        return exact
    host = this_host() if host is None else host
    live = [s for s in store.runs(limit=200, host=host) if not s.final]
    for state in live:
        if run_token(state.run_id) == text:
            return state
    matches = [s for s in live if text in s.run_id]
    return matches[0] if len(matches) == 1 else None


def describe(command: Command) -> str:
    """One line about a command: ``stop by alice@gpu-7 via cli: done (ended at step 120)``."""
    text = f"{command.action} by {command.actor} via {command.source}: {command.state}"
    return f"{text} ({command.detail})" if command.detail else text


def recent_entry(command: Command) -> dict[str, Any]:
    """What a run's state keeps of a command for its card and the dashboard."""
    return {
        "id": command.id,
        "action": command.action,
        "source": command.source,
        "actor": command.actor,
        "at": command.created,
        "state": command.state,
        "detail": command.detail,
    }


def _refusal(
    state: RunState | None, run_id: str, action: str, source: str, policy: ControlPolicy
) -> str | None:
    if action not in ACTIONS:
        return f"unknown command {action!r}; use stop, checkpoint or status"
    if not policy.allows(source):
        return f"commands through {source} are off here (AFS_CONTROL does not name {source})"
    if state is None:
        return f"no run {run_id!r} in this host's history"
    host = this_host()
    if state.host and state.host != host:
        return f"the run trains on {state.host}, not on this host ({host})"
    if action == STATUS:
        return None
    if state.final:
        return f"the run has ended ({state.status})"
    if source != RULE and source not in accepts(state):
        return f"the run takes no commands through {source} (its AFS_CONTROL)"
    return None


__all__ = [
    "ACTIONS",
    "STATUS",
    "accepts",
    "cancel",
    "confirm",
    "describe",
    "find_run",
    "issue",
    "local_actor",
    "recent_entry",
    "run_token",
    "this_host",
]
