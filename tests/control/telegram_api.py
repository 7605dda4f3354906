"""A loopback Telegram Bot API that plays the parts run control uses, as documented:

* ``getUpdates``: a long poll (``timeout`` seconds, held open until an update arrives);
  ``offset`` confirms every update before it (they are never sent again); a second
  consumer's call ends the one waiting with 409 "Conflict: terminated by other getUpdates
  request"; while a webhook is set every call is 409 "can't use getUpdates method while
  webhook is active"; a scripted 429 carries ``parameters.retry_after``.
* ``sendMessage`` (returns ``result.message_id``), ``editMessageText``,
  ``answerCallbackQuery`` (recorded), ``deleteWebhook``.
* ``tap(...)`` / ``say(...)`` queue a ``callback_query`` / a ``message`` update as a
  person's phone would produce them.

It is a :class:`~afs_callbacks.testing.LoopbackReceiver` with a responder, so every
request is also in ``requests``.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply

TOKEN = "123456789:AAtest-control-bot-token-value"


def _error(code: int, description: str, **parameters: Any) -> Reply:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply(code, body)


class FakeBotAPI(LoopbackReceiver):
    """One bot's Bot API (see the module docstring)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.answers: list[dict[str, Any]] = []
        self.webhook: str | None = None
        self.conflicts = 0
        self.rate_limit_next: int | None = None
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(500)
        self._state = threading.Condition()
        self._waiting: int | None = None  # the getUpdates call now held open (its ticket)
        self._tickets = itertools.count(1)
        self._terminated: set[int] = set()
        super().__init__(responder=self._answer)

    # What a phone does -----------------------------------------------------------------

    def tap(self, user: int, chat: int, data: str, *, message_id: int = 1, username: str = "alice") -> None:
        """A tap on an inline button of message ``message_id`` in ``chat``."""
        self._add(
            {
                "callback_query": {
                    "id": f"cq{next(self._ids)}",
                    "from": {"id": user, "is_bot": False, "first_name": username, "username": username},
                    "message": {"message_id": message_id, "chat": {"id": chat}, "date": int(time.time())},
                    "chat_instance": "1",
                    "data": data,
                }
            }
        )

    def say(self, user: int, chat: int, text: str, *, date: float | None = None) -> None:
        """A text message (``/stop run-1``) sent at ``date`` (default now)."""
        self._add(
            {
                "message": {
                    "message_id": next(self._message_ids),
                    "from": {"id": user, "is_bot": False, "first_name": "x", "username": "alice"},
                    "chat": {"id": chat, "type": "private" if chat > 0 else "group"},
                    "date": int(date if date is not None else time.time()),
                    "text": text,
                }
            }
        )

    def _add(self, update: dict[str, Any]) -> None:
        with self._state:
            self.updates.append({"update_id": next(self._ids) + 1000, **update})
            self._state.notify_all()

    # What the tests read ---------------------------------------------------------------

    def sent(self) -> list[dict[str, Any]]:
        """sendMessage bodies, in order."""
        with self._state:
            return [dict(m) for m in self.messages.values()]

    def calls(self, method: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(f"/{method}")]

    # The API -------------------------------------------------------------------------

    def _answer(self, request: ReceivedRequest) -> Reply:
        prefix = f"/bot{self.token}/"
        if not request.path.startswith(prefix):
            return _error(401, "Unauthorized")
        method = request.path[len(prefix) :]
        body = request.json() if request.body else {}
        if method == "getUpdates":
            return self._get_updates(body)
        with self._state:
            if method == "sendMessage":
                message_id = next(self._message_ids)
                self.messages[message_id] = {**body, "message_id": message_id}
                return Reply(
                    200, {"ok": True, "result": {"message_id": message_id, "text": body.get("text")}}
                )
            if method == "editMessageText":
                message = self.messages.get(body.get("message_id"))
                if message is None:
                    return _error(400, "Bad Request: message to edit not found")
                if message.get("text") == body.get("text") and message.get("reply_markup") == body.get(
                    "reply_markup"
                ):
                    return _error(400, "Bad Request: message is not modified")
                message.update(body)
                if "reply_markup" not in body:
                    message.pop("reply_markup", None)  # an edit without it removes the buttons
                return Reply(200, {"ok": True, "result": {"message_id": body["message_id"]}})
            if method == "answerCallbackQuery":
                self.answers.append(body)
                return Reply(200, {"ok": True, "result": True})
            if method == "deleteWebhook":
                self.webhook = None
                return Reply(200, {"ok": True, "result": True})
        return _error(404, "Not Found")

    def _get_updates(self, body: dict[str, Any]) -> Reply:
        with self._state:
            if self.webhook is not None:
                return _error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active;"
                    " use deleteWebhook to delete the webhook first",
                )
            if self.rate_limit_next is not None:
                retry, self.rate_limit_next = self.rate_limit_next, None
                return _error(429, f"Too Many Requests: retry after {retry}", retry_after=retry)
            offset = body.get("offset")
            if isinstance(offset, int):  # confirms every update before it: gone for good
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            ticket = next(self._tickets)
            if self._waiting is not None:
                self._terminated.add(self._waiting)  # the one held open ends with 409
                self.conflicts += 1
                self._state.notify_all()
            self._waiting = ticket
            deadline = time.monotonic() + float(body.get("timeout") or 0)
            while not self.updates and ticket not in self._terminated:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
            if self._waiting == ticket:
                self._waiting = None
            if ticket in self._terminated:
                self._terminated.discard(ticket)
                return _error(
                    409,
                    "Conflict: terminated by other getUpdates request;"
                    " make sure that only one bot instance is running",
                )
            return Reply(200, {"ok": True, "result": list(self.updates[:100])})
