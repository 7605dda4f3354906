"""Telegram as a control surface: buttons under the live card and ``/status``, ``/stop
<run>``, ``/checkpoint <run>``, read by long-polling ``getUpdates``.

Long polling needs no public endpoint: it works from a cluster node behind NAT. The Bot
API's rules, and what this module does about each:

* **One consumer per token.** A second ``getUpdates`` on the same bot ends the first with
  409 "terminated by other getUpdates request". So one poller runs per host and state
  directory (an exclusive ``flock`` on ``control-telegram-<bot id>.lock``: the first
  training process to take it polls for every run of the host; another takes over when it
  exits). Several hosts sharing one bot would fight: on a 409 the poller backs off (5 s,
  doubling to 5 min, with jitter) and logs it once. Give each host its own bot, or enable
  ``telegram`` in ``AFS_CONTROL`` on one host only (docs/control.md).
* **No polling while a webhook is set** (409 too, "can't use getUpdates method while
  webhook is active"): the poller says so once and backs off; it never deletes someone's
  webhook.
* **Offsets acknowledge updates.** Each call passes the last ``update_id`` + 1, which
  confirms everything before it; what the bot received before the poller started (up to
  24 hours of it) is read once as a backlog: text commands older than the age limit are
  ignored, and taps from the backlog are answered "tap again" (a tap carries no time).
* **429 ``retry_after``** is honoured, however long.

A tap is answered at once with ``answerCallbackQuery`` (the button stops spinning). Stop
asks a question first ("Yes, stop it" / "Cancel", by the same person, within the age
limit); the poller follows up in the chat when a command it stored is carried out or
refused. Every tap and command, refused ones too, is stored as a command.
"""

from __future__ import annotations

import fcntl
import html
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from afs_callbacks._files import open_private, private_dir
from afs_callbacks._log import get_logger
from afs_callbacks.channels.telegram import (
    CALLBACK_PREFIX,
    TelegramNotifier,
    card_html,
    confirm_buttons,
)
from afs_callbacks.control.commands import (
    STATUS,
    cancel,
    confirm,
    describe,
    find_run,
    issue,
    this_host,
)
from afs_callbacks.control.policy import TELEGRAM, ControlPolicy
from afs_callbacks.delivery.outbox import ACCEPTED, EXPIRED, UNCONFIRMED, Command, Outbox
from afs_callbacks.redaction import redact
from afs_callbacks.tracking.asks import CHECKPOINT, STOP

log = get_logger(__name__)

#: Seconds one ``getUpdates`` waits for an update (the long poll).
POLL_SECONDS = 25
#: The long poll's wait while a command stored here is not finished (its answer follows).
FOLLOW_UP_SECONDS = 2
#: Back-off after a 409 or a network failure: first wait, longest wait (seconds).
BACKOFF = (5.0, 300.0)
LOCK_TEMPLATE = "control-telegram-{bot}.lock"

_pollers: dict[tuple[str, str], TelegramPoller] = {}
_pollers_lock = threading.Lock()


def ensure_poller(manager: Any, policy: ControlPolicy) -> TelegramPoller | None:
    """Start this process's poller for the manager's Telegram bot (once per bot and state
    directory); it polls when it holds the host's lock. None without a Telegram channel."""
    channel = manager.handlers.get("telegram")
    if not isinstance(channel, TelegramNotifier):
        log.warning("afs-callbacks: AFS_CONTROL names telegram, but no Telegram channel is configured")
        return None
    if channel.chat_id.startswith(("-", "@")) and not policy.telegram_users:
        log.warning(
            "afs-callbacks: every member of Telegram chat %s can stop and checkpoint runs; list who"
            " may in AFS_CONTROL_TELEGRAM_USERS",
            channel.chat_id,
        )
    key = (os.path.realpath(manager.state_dir), channel.bot_id)
    with _pollers_lock:
        poller = _pollers.get(key)
        if poller is None or poller.stopped:
            poller = _pollers[key] = TelegramPoller(channel, manager, policy)
            poller.start()
    return poller


class TelegramPoller:
    """The ``getUpdates`` loop of one bot on one host (see the module docstring).

    Args:
        channel: the Telegram channel (its API server, token and chat).
        manager: the store the commands go to, and its change listeners.
        policy: who may command.
    """

    def __init__(self, channel: TelegramNotifier, manager: Any, policy: ControlPolicy) -> None:
        self.channel = channel
        self.manager = manager
        self.policy = policy
        self.offset: int | None = None
        self.stopped = False
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._unlisten: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._open: dict[str, tuple[str, str]] = {}  # command id -> (chat id, state told)
        self._failures = 0
        self._told: set[str] = set()  # problems logged once

    @property
    def polling(self) -> bool:
        """Whether this process polls (it holds the host's lock)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Poll now if the host's lock is free, else try again whenever the store changes
        (at most once a second: piggy-backed on the senders' looks)."""
        if self._take_lock():
            self._start_thread()
        elif self._unlisten is None:
            self._unlisten = self.manager.on_store_change(self._retry_lock)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop polling and release the lock (a request in flight ends by its timeout)."""
        self.stopped = True
        self._stop.set()
        if self._unlisten is not None:
            self._unlisten()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> bool:
        path = os.path.join(self.manager.state_dir, LOCK_TEMPLATE.format(bot=self.channel.bot_id))
        try:
            private_dir(self.manager.state_dir)
            fd = open_private(path)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _retry_lock(self) -> None:
        if self.stopped or self.polling or not self._take_lock():
            return
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="afs-telegram-poll", daemon=True)
        self._thread.start()

    # The loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        backlog = True
        while not self._stop.is_set():
            wait = FOLLOW_UP_SECONDS if self._open else POLL_SECONDS
            try:
                updates = self._get_updates(0 if backlog else wait)
            except _Wait as pause:
                self._stop.wait(pause.seconds)
                continue
            except _Fatal:
                return
            self._failures = 0
            for update in updates:
                update_id = update.get("update_id")
                if isinstance(update_id, int):
                    self.offset = update_id + 1  # confirmed by the next call
                try:
                    self.handle(update, backlog=backlog)
                except Exception:
                    log.exception("afs-callbacks: a Telegram update could not be handled")
            backlog = backlog and bool(updates)  # the backlog ends with the first empty answer
            self._follow_up()

    def _get_updates(self, timeout: int) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"timeout": timeout, "allowed_updates": ["message", "callback_query"]}
        if self.offset is not None:
            payload["offset"] = self.offset
        try:
            response = self._session.post(
                self.channel.method_url("getUpdates"), json=payload, timeout=(10.0, timeout + 15.0)
            )
        except requests.RequestException as error:
            raise self._backoff(f"cannot reach the Bot API ({type(error).__name__})") from None
        body = _json(response)
        if response.status_code == 200 and body.get("ok"):
            result = body.get("result")
            return [u for u in result if isinstance(u, dict)] if isinstance(result, list) else []
        description = redact(str(body.get("description") or response.reason or ""))[:200]
        if response.status_code == 409:
            if "webhook" in description.lower():
                raise self._backoff(
                    "the bot has a webhook set, so it cannot be polled (the Bot API allows one or the"
                    " other); delete the webhook or turn telegram off in AFS_CONTROL",
                    minimum=BACKOFF[1],
                )
            raise self._backoff(
                "another process polls this bot (409 Conflict: a second host, or a second state"
                " directory, with the same bot); backing off. Give each host its own bot or enable"
                " telegram control on one host only"
            )
        if response.status_code == 429:
            retry = (body.get("parameters") or {}).get("retry_after")
            seconds = float(retry) if isinstance(retry, (int, float)) else BACKOFF[0]
            raise _Wait(seconds)
        if response.status_code in (401, 403, 404):
            self._tell_once(
                f"the Bot API refused getUpdates ({response.status_code} {description}); polling stops"
            )
            raise _Fatal()
        raise self._backoff(f"getUpdates answered {response.status_code} {description}")

    def _backoff(self, problem: str, *, minimum: float = 0.0) -> _Wait:
        self._tell_once(problem)
        self._failures += 1
        cap = min(BACKOFF[1], BACKOFF[0] * 2 ** (self._failures - 1))
        return _Wait(max(minimum, random.uniform(cap / 2, cap)))

    def _tell_once(self, problem: str) -> None:
        if problem not in self._told:
            self._told.add(problem)
            log.warning("afs-callbacks: telegram control: %s", problem)

    # One update --------------------------------------------------------------------------

    def handle(self, update: dict[str, Any], *, backlog: bool = False) -> None:
        """Act on one update: a tap (``callback_query``) or a text command (``message``)."""
        query = update.get("callback_query")
        if isinstance(query, dict):
            self._tap(query, backlog)
            return
        message = update.get("message")
        if isinstance(message, dict):
            self._message(message)

    def _tap(self, query: dict[str, Any], backlog: bool) -> None:
        query_id = str(query.get("id", ""))
        data = str(query.get("data") or "")
        parts = data.split(":", 2)
        if len(parts) != 3 or parts[0] != CALLBACK_PREFIX:
            self._answer(query_id, "")
            return
        if backlog:
            self._answer(query_id, "This was tapped before the bot was listening: tap it again.")
            return
        op, arg = parts[1], parts[2]
        user = query.get("from") or {}
        message = query.get("message") or {}
        chat_id = str((message.get("chat") or {}).get("id", ""))
        actor = _actor(user)
        refusal = self.policy.telegram_refusal(str(user.get("id", "")), chat_id, self.channel.chat_id)
        store = self._store()
        if op in ("y", "n"):
            self._confirmation(store, query_id, op, arg, actor, refusal, chat_id, message)
            return
        action = {"s": STOP, "c": CHECKPOINT, "i": STATUS}.get(op)
        state = find_run(store, arg)
        if action is None:
            self._answer(query_id, "Unknown button.")
            return
        run_id = state.run_id if state is not None else arg
        self._ask(store, run_id, action, actor, refusal, chat_id, query_id=query_id)

    def _message(self, message: dict[str, Any]) -> None:
        text = str(message.get("text") or "").strip()
        if not text.startswith("/"):
            return
        words = text.split()
        command = words[0][1:].split("@", 1)[0].lower()
        if command not in ("status", "stop", "checkpoint"):
            return
        chat_id = str((message.get("chat") or {}).get("id", ""))
        user = message.get("from") or {}
        actor = _actor(user)
        refusal = self.policy.telegram_refusal(str(user.get("id", "")), chat_id, self.channel.chat_id)
        store = self._store()
        name = " ".join(words[1:])
        sent = message.get("date")
        if isinstance(sent, (int, float)) and time.time() - sent > self.policy.max_age:
            # Read late (the poller was not running): ignored, and kept in the history.
            state = find_run(store, name) if name else None
            if state is not None:
                late = f"sent {time.time() - sent:.0f} s before the bot read it (AFS_CONTROL_MAX_AGE)"
                action = {"stop": STOP, "checkpoint": CHECKPOINT}.get(command, STATUS)
                issue(
                    store,
                    state.run_id,
                    action,
                    source=TELEGRAM,
                    actor=actor,
                    policy=self.policy,
                    refusal=late,
                )
            return
        if command == "status" and not name:
            if refusal is not None:
                self._send(chat_id, f"Not allowed: {html.escape(refusal)}")
                return
            self._send(chat_id, self._run_list(store))
            return
        state = find_run(store, name)
        if state is None and refusal is None:
            hint = "name one: /status lists them" if name else "add the run's id: /stop RUN_ID"
            self._send(chat_id, f"No live run matching <code>{html.escape(name)}</code> here; {hint}.")
            return
        run_id = state.run_id if state is not None else name or "?"
        self._ask(
            store,
            run_id,
            {"stop": STOP, "checkpoint": CHECKPOINT}.get(command, STATUS),
            actor,
            refusal,
            chat_id,
        )

    def _ask(
        self,
        store: Outbox,
        run_id: str,
        action: str,
        actor: str,
        refusal: str | None,
        chat_id: str,
        *,
        query_id: str | None = None,
    ) -> None:
        command = issue(
            store,
            run_id,
            action,
            source=TELEGRAM,
            actor=actor,
            policy=self.policy,
            confirmed=action != STOP,  # a stop asks "are you sure?" first
            refusal=refusal,
            reply={"chat_id": chat_id},
        )
        self.manager.store_changed()
        if command.state == "refused":
            self._reply(query_id, chat_id, f"Refused: {command.detail}")
            return
        if action == STATUS:
            state = store.run(run_id)
            if state is not None:
                self._send(chat_id, card_html(state))
            if query_id is not None:
                self._answer(query_id, "")
            return
        if command.state == UNCONFIRMED:
            state = store.run(run_id)
            model = html.escape(state.model) if state is not None else "the run"
            self._send(
                chat_id,
                f"Stop <b>{model}</b> (<code>{html.escape(run_id)}</code>) on {html.escape(this_host())}?"
                " It finishes its current step, saves a checkpoint where it has a checkpointer, and ends.",
                reply_markup=confirm_buttons(command.id),
            )
            if query_id is not None:
                self._answer(query_id, "Confirm below.")
            return
        self._open[command.id] = (chat_id, command.state)
        self._reply(query_id, chat_id, "Checkpoint asked: the run saves at its next step.")

    def _confirmation(
        self,
        store: Outbox,
        query_id: str,
        op: str,
        command_id: str,
        actor: str,
        refusal: str | None,
        chat_id: str,
        message: dict[str, Any],
    ) -> None:
        if refusal is not None:
            self._answer(query_id, f"Refused: {refusal}")
            return
        asked = store.command(command_id)
        if asked is None or asked.state != UNCONFIRMED:
            self._answer(query_id, "This question was answered already.")
            return
        if asked.actor != actor:
            self._answer(query_id, f"Only {asked.actor} can answer this.")
            return
        if op == "y":
            now = confirm(store, command_id, actor=actor, policy=self.policy)
        else:
            now = cancel(store, command_id, actor=actor)
        self.manager.store_changed()
        if now is None:
            return
        if now.state == EXPIRED:
            text = f"Too late: confirmations count for {self.policy.max_age:g} s. Ask again."
        elif op == "y":
            text = "Stopping at the run's next step."
            self._open[now.id] = (chat_id, now.state)
        else:
            text = "Cancelled: the run goes on."
        self._answer(query_id, text)
        message_id = message.get("message_id")
        if message_id is not None:
            self._call("editMessageText", chat_id=chat_id, message_id=message_id, text=html.escape(text))

    # Follow-ups --------------------------------------------------------------------------

    def _follow_up(self) -> None:
        """Tell the chat how a command stored here went, once it moved on."""
        if not self._open:
            return
        store = self._store()
        for command_id, (chat_id, told) in list(self._open.items()):
            command = store.command(command_id)
            if command is None:
                del self._open[command_id]
                continue
            mark = f"{command.state}|{command.detail}"
            if mark == told:
                continue
            progress = command.state == ACCEPTED and command.detail.startswith(
                ("stopping", "checkpoint saved")
            )
            if command.finished or progress:
                self._send(chat_id, _result_text(command))
            self._open[command_id] = (chat_id, mark)
            if command.finished:
                del self._open[command_id]

    # Bot API calls -----------------------------------------------------------------------

    def _reply(self, query_id: str | None, chat_id: str, text: str) -> None:
        if query_id is not None:
            self._answer(query_id, text)
        else:
            self._send(chat_id, html.escape(text))

    def _answer(self, query_id: str, text: str) -> None:
        """answerCallbackQuery: stops the button's spinner (text shown as a toast, ≤200)."""
        fields: dict[str, Any] = {"callback_query_id": query_id}
        if text:
            fields["text"] = text[:200]
        self._call("answerCallbackQuery", **fields)

    def _send(self, chat_id: str, text: str, **fields: Any) -> None:
        self._call("sendMessage", chat_id=chat_id, text=text[:4096], parse_mode="HTML", **fields)

    def _call(self, method: str, **fields: Any) -> bool:
        """One Bot API call; a failure is logged (redacted) and costs nothing else."""
        try:
            response = self._session.post(self.channel.method_url(method), json=fields, timeout=(10.0, 15.0))
        except requests.RequestException as error:
            log.warning("afs-callbacks: telegram %s failed: %s", method, type(error).__name__)
            return False
        if response.status_code != 200:
            body = _json(response)
            log.info(
                "afs-callbacks: telegram %s answered %s: %s",
                method,
                response.status_code,
                redact(str(body.get("description") or ""))[:200],
            )
            return False
        return True

    def _store(self) -> Outbox:
        store: Outbox = self.manager.outbox
        return store

    def _run_list(self, store: Outbox) -> str:
        live = [s for s in store.runs(limit=50, host=this_host()) if not s.final]
        if not live:
            return f"No run is training on {html.escape(this_host())}."
        lines = [f"<b>Runs on {html.escape(this_host())}</b>"]
        for state in live[:20]:
            step = f"step {state.step:,}" if state.step is not None else "starting"
            lines.append(f"• {html.escape(state.model)} <code>{html.escape(state.run_id)}</code> · {step}")
        lines.append("Tap a card's buttons, or /stop RUN_ID, /checkpoint RUN_ID, /status RUN_ID.")
        return "\n".join(lines)


def _result_text(command: Command) -> str:
    icon = {"done": "✅", "refused": "⛔", "expired": "⌛", "accepted": "⏳"}.get(command.state, "•")
    return f"{icon} <code>{html.escape(command.run_id)}</code>: {html.escape(describe(command))}"


def _actor(user: dict[str, Any]) -> str:
    name = user.get("username")
    return f"telegram user {user.get('id', '?')}" + (f" (@{name})" if name else "")


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class _Wait(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class _Fatal(Exception):
    pass


__all__ = ["BACKOFF", "FOLLOW_UP_SECONDS", "POLL_SECONDS", "TelegramPoller", "ensure_poller"]
