"""Slack as a control surface: buttons on the live card, clicks read over Socket Mode.

Socket Mode needs no public endpoint either: an app-level token (``SLACK_APP_TOKEN``,
``xapp-…``, scope ``connections:write``) opens a websocket through
``apps.connections.open``, and Slack sends the app's interactive payloads (button clicks)
down it; each must be acknowledged with its ``envelope_id`` within 3 seconds. The client
is ``slack_sdk``'s (``slack_sdk.socket_mode``, the ``[slack]`` extra), not a hand-written
websocket. Live cards need the bot token (``SLACK_BOT_TOKEN`` and ``SLACK_CHANNEL``); the
buttons show on a run's card when the run takes commands through Slack (``AFS_CONTROL``).

One connection per host and state directory (an ``flock``, as for Telegram). Slack allows
several connections per app and spreads the payloads over them, so several hosts sharing
an app each get some clicks; a click for another host's run is answered "this run trains
on HOST" and refused there (docs/control.md: one app per host, or one host with
``slack`` enabled).

:func:`handle_interaction` turns one ``block_actions`` payload into a command; it is
what the socket's listener calls after the acknowledgement.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any

from afs_callbacks._files import open_private, private_dir
from afs_callbacks._log import get_logger
from afs_callbacks.channels.card_view import render_text
from afs_callbacks.channels.slack import (
    ACTION_CANCEL,
    ACTION_CHECKPOINT,
    ACTION_CONFIRM,
    ACTION_STATUS,
    ACTION_STOP,
    SlackNotifier,
    confirm_blocks,
    split_card_id,
)
from afs_callbacks.control.commands import STATUS, cancel, confirm, issue, this_host
from afs_callbacks.control.policy import SLACK, ControlPolicy
from afs_callbacks.delivery.outbox import EXPIRED, REFUSED, UNCONFIRMED, Outbox
from afs_callbacks.redaction import redact, register_secret
from afs_callbacks.tracking.asks import CHECKPOINT, STOP

log = get_logger(__name__)

LOCK_TEMPLATE = "control-slack-{app}.lock"
_ACTIONS = {ACTION_STOP: STOP, ACTION_CHECKPOINT: CHECKPOINT, ACTION_STATUS: STATUS}
_sockets: dict[str, Any] = {}
_sockets_lock = threading.Lock()

#: Posts a message to Slack: (channel, text, blocks or None, thread ts or None).
Poster = Callable[[str, str, "list[dict[str, Any]] | None", "str | None"], None]


def handle_interaction(
    payload: dict[str, Any],
    *,
    store: Outbox,
    policy: ControlPolicy,
    channels: tuple[str, ...],
    post: Poster,
) -> str:
    """Act on one interactive payload (a click on a control button); returns what was
    done, in words (also posted to the card's thread).

    ``channels``: the configured channel's name and id (clicks elsewhere are refused).
    """
    if payload.get("type") != "block_actions":
        return "ignored: not a button click"
    user = payload.get("user") or {}
    user_id = str(user.get("id", ""))
    actor = f"slack user {user_id}" + (f" ({user['username']})" if user.get("username") else "")
    channel_id = str((payload.get("channel") or {}).get("id", ""))
    message = payload.get("container") or {}
    thread = str(message.get("thread_ts") or message.get("message_ts") or "") or None
    answers = []
    for action in payload.get("actions") or []:
        action_id = str(action.get("action_id", ""))
        value = str(action.get("value", ""))
        asked = store.command(value) if action_id in (ACTION_CONFIRM, ACTION_CANCEL) else None
        run_id = asked.run_id if asked is not None else value
        # The configured channel may be a name; the card's own channel id counts as it.
        card = store.card_id(run_id, "slack")
        allowed = channels + ((split_card_id(card, channel_id)[0],) if card else ())
        refusal = policy.slack_refusal(user_id, channel_id, allowed)
        if action_id in (ACTION_CONFIRM, ACTION_CANCEL):
            answers.append(_confirmation(store, policy, action_id, value, actor, refusal))
            continue
        kind = _ACTIONS.get(action_id)
        if kind is None:
            continue
        command = issue(
            store,
            value,
            kind,
            source=SLACK,
            actor=actor,
            policy=policy,
            confirmed=kind != STOP,
            refusal=refusal,
            reply={"channel": channel_id, "thread_ts": thread},
        )
        if command.state == REFUSED:
            answers.append(f"Refused: {command.detail}")
        elif kind == STATUS:
            state = store.run(value)
            answers.append(render_text(state) if state is not None else "no such run")
        elif command.state == UNCONFIRMED:
            question = (
                f"Stop run {value} on {this_host()}? It finishes its current step, saves a checkpoint"
                " where it has a checkpointer, and ends."
            )
            post(channel_id, question, confirm_blocks(question, command.id), thread)
            answers.append("Confirm in the thread.")
            continue
        else:
            answers.append("Checkpoint asked: the run saves at its next step.")
        post(channel_id, answers[-1], None, thread)
    return "\n".join(answers) or "ignored: no control button"


def _confirmation(
    store: Outbox, policy: ControlPolicy, action_id: str, command_id: str, actor: str, refusal: str | None
) -> str:
    if refusal is not None:
        return f"Refused: {refusal}"
    asked = store.command(command_id)
    if asked is None or asked.state != UNCONFIRMED:
        return "This question was answered already."
    if asked.actor != actor:
        return f"Only {asked.actor} can answer this."
    if action_id == ACTION_CANCEL:
        cancel(store, command_id, actor=actor)
        return "Cancelled: the run goes on."
    now = confirm(store, command_id, actor=actor, policy=policy)
    if now is not None and now.state == EXPIRED:
        return f"Too late: confirmations count for {policy.max_age:g} s. Ask again."
    return "Stopping at the run's next step."


def ensure_socket(manager: Any, policy: ControlPolicy) -> Any:
    """Open this host's Socket Mode connection for the manager's Slack app (once per
    state directory; another process of the host holding the lock has it). None when
    Slack is not set up for it (a warning says what is missing)."""
    channel = manager.handlers.get("slack")
    env = manager.env if manager.env is not None else os.environ
    app_token = str(env.get("SLACK_APP_TOKEN") or "").strip()
    register_secret(app_token or None)
    if not isinstance(channel, SlackNotifier) or channel.bot_token is None or not app_token:
        log.warning(
            "afs-callbacks: AFS_CONTROL names slack, which needs SLACK_BOT_TOKEN, SLACK_CHANNEL and an"
            " app-level SLACK_APP_TOKEN (xapp-..., Socket Mode)"
        )
        return None
    key = os.path.realpath(manager.state_dir)
    with _sockets_lock:
        if key in _sockets:
            return _sockets[key]
        app = app_token.split("-")[1] if "-" in app_token else "app"  # the app's public id
        lock = os.path.join(key, LOCK_TEMPLATE.format(app=app))
        try:
            private_dir(key)
            fd = open_private(lock)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # another process of this host holds the connection
        try:
            client = _connect(manager, policy, channel, app_token)
        except ImportError:
            os.close(fd)
            log.warning("afs-callbacks: Slack control needs slack_sdk: pip install 'afs-callbacks[slack]'")
            return None
        except Exception as error:
            os.close(fd)
            log.warning("afs-callbacks: Slack Socket Mode did not connect: %s", redact(error))
            return None
        _sockets[key] = client
        return client


def _connect(manager: Any, policy: ControlPolicy, channel: SlackNotifier, app_token: str) -> Any:
    from slack_sdk.socket_mode import SocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest
    from slack_sdk.socket_mode.response import SocketModeResponse
    from slack_sdk.web import WebClient

    web = WebClient(token=channel.bot_token, base_url=channel.api_url.rstrip("/") + "/")
    client = SocketModeClient(app_token=app_token, web_client=web)
    name = channel.channel or ""
    configured = tuple(dict.fromkeys(n for n in (name, name.lstrip("#")) if n))

    def post(to: str, text: str, blocks: list[dict[str, Any]] | None, thread: str | None) -> None:
        payload: dict[str, Any] = {"channel": to, "text": text[:3000]}
        if blocks:
            payload["blocks"] = blocks
        if thread:
            payload["thread_ts"] = thread
        channel.api("chat.postMessage", payload)

    def on_request(socket: Any, request: SocketModeRequest) -> None:
        # Acknowledged first: Slack wants the envelope back within 3 seconds.
        socket.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type != "interactive":
            return
        try:
            store: Outbox = manager.outbox
            handle_interaction(request.payload, store=store, policy=policy, channels=configured, post=post)
            manager.store_changed()
        except Exception:
            log.exception("afs-callbacks: a Slack click could not be handled")

    client.socket_mode_request_listeners.append(on_request)
    client.connect()
    return client


__all__ = ["ensure_socket", "handle_interaction"]
