"""Loopback stand-ins for the services that can edit a message, for the card tests.

Each is a :class:`~afs_callbacks.testing.LoopbackReceiver` (a real HTTP server on
127.0.0.1) whose responder keeps the messages it was sent and answers their post and edit
endpoints the way the service documents:

- Discord webhook: ``POST /api/webhooks/{id}/{token}?wait=true`` returns the message
  (snowflake ``id``); ``PATCH .../messages/{id}`` edits; a deleted message answers 404
  ``{"message": "Unknown Message", "code": 10008}``; 429 with ``retry_after``.
- Telegram Bot API: ``sendMessage`` returns ``result.message_id``; ``editMessageText``
  answers 400 "message is not modified" for the same text and "message to edit not found"
  for a deleted message; 429 with ``parameters.retry_after``.
- Slack Web API: HTTP 200 ``{"ok": ...}``; ``chat.postMessage`` returns the channel's id
  and ``ts``; ``chat.update`` wants the channel id (a name is ``channel_not_found``) and
  answers ``message_not_found`` for a deleted one; a wrong token is ``invalid_auth``.
- ntfy: JSON publish; from 2.16 a ``sequence_id`` replaces the notification of the same
  id, older servers ignore the field and add a new one.

Every server can be scripted: ``fail(status, body, headers)`` answers the next requests
so (an outage, a rate limit), ``down = True`` answers 503 until cleared, ``delay`` makes
every answer slow.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import threading
from collections.abc import Mapping
from typing import Any

from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply


def answer(status: int = 200, body: Any = None, headers: Mapping[str, str] | None = None) -> Reply:
    """A JSON answer (an empty body when ``body`` is None), as these services give."""
    return Reply(
        status, b"" if body is None else body, {"Content-Type": "application/json", **(headers or {})}
    )


class FakeService(LoopbackReceiver):
    """A service played on a loopback receiver: :meth:`handle` answers each request."""

    def __init__(self) -> None:
        self.down = False
        #: Held while :meth:`handle` runs (the server answers on a thread per request).
        self.lock = threading.Lock()
        super().__init__(responder=self._answer)

    def fail(
        self, status: int, body: Any = None, headers: Mapping[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests with this instead of handling them."""
        self.reply(*(answer(status, body, headers) for _ in range(times)))

    def _answer(self, request: ReceivedRequest) -> Reply:
        with self.lock:
            if self.down:
                return answer(503, {"error": "service unavailable"})
            return self.handle(request)

    def handle(self, request: ReceivedRequest) -> Reply:
        """The service's answer (called with ``lock`` held)."""
        raise NotImplementedError


class FakeTelegram(FakeService):
    """The Bot API's sendMessage / editMessageText for one bot token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.messages: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(100)
        super().__init__()

    def calls(self, method: str) -> list[ReceivedRequest]:
        """Answered requests to one Bot API method."""
        return [r for r in self.requests if r.path.endswith(f"/{method}")]

    def handle(self, request: ReceivedRequest) -> Reply:
        prefix = f"/bot{self.token}/"
        if not request.path.startswith(prefix):
            return _telegram_error(401, "Unauthorized")
        method = request.path[len(prefix) :]
        if method == "sendPhoto":  # multipart: the caption is the message's text
            fields = _form_fields(request)
            message_id = next(self._ids)
            self.messages[message_id] = {
                "chat": fields["chat_id"],
                "text": fields["caption"],
                "silent": False,
            }
            return answer(
                200, {"ok": True, "result": {"message_id": message_id, "caption": fields["caption"]}}
            )
        body = request.json()
        if method == "sendMessage":
            message_id = next(self._ids)
            silent = bool(body.get("disable_notification"))
            self.messages[message_id] = {"chat": body["chat_id"], "text": body["text"], "silent": silent}
            return answer(200, {"ok": True, "result": {"message_id": message_id, "text": body["text"]}})
        if method == "editMessageText":
            message = self.messages.get(body["message_id"])
            if message is None or message["chat"] != body["chat_id"]:
                return _telegram_error(400, "Bad Request: message to edit not found")
            if message["text"] == body["text"]:
                return _telegram_error(
                    400,
                    "Bad Request: message is not modified: specified new message content and reply"
                    " markup are exactly the same as a current content and reply markup of the message",
                )
            message["text"] = body["text"]
            return answer(
                200, {"ok": True, "result": {"message_id": body["message_id"], "text": body["text"]}}
            )
        return _telegram_error(404, "Not Found")


def _form_fields(request: ReceivedRequest) -> dict[str, str]:
    """The text fields of a multipart/form-data body."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is None and isinstance(name, str):
            fields[name] = part.get_content()
    return fields


def _telegram_error(code: int, description: str, retry_after: int | None = None) -> Reply:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return answer(code, body)


def telegram_rate_limit(retry_after: int) -> tuple[int, dict[str, Any]]:
    """A Bot API 429 (status, body)."""
    error = _telegram_error(429, f"Too Many Requests: retry after {retry_after}", retry_after)
    return error.status, error.body


class FakeDiscord(FakeService):
    """One Discord webhook's execute / edit-message endpoints."""

    def __init__(
        self, webhook_id: str = "123456789012345678", token: str = "discord-token-secret-abc"
    ) -> None:
        self.base = f"/api/webhooks/{webhook_id}/{token}"
        self.messages: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1_180_000_000_000_000_000)
        super().__init__()

    @property
    def webhook_url(self) -> str:
        """The webhook URL to configure."""
        return self.url(self.base)

    def handle(self, request: ReceivedRequest) -> Reply:
        if request.method == "POST" and request.path == self.base:
            message_id = str(next(self._ids))
            self.messages[message_id] = request.json()
            if request.query.get("wait") != ["true"]:
                return answer(204)
            return answer(200, {"id": message_id, **request.json()})
        prefix = self.base + "/messages/"
        if request.method == "PATCH" and request.path.startswith(prefix):
            message_id = request.path[len(prefix) :]
            if message_id not in self.messages:
                return answer(404, {"message": "Unknown Message", "code": 10008})
            self.messages[message_id] = request.json()
            return answer(200, {"id": message_id, **request.json()})
        return answer(404, {"message": "Unknown Webhook", "code": 10015})


class FakeSlack(FakeService):
    """The Web API's chat.postMessage / chat.update / auth.test for one bot token."""

    def __init__(self, token: str, channels: Mapping[str, str] | None = None) -> None:
        self.token = token
        #: Channel names and ids the bot may post to -> the channel's id.
        self.channels = dict(channels or {"#training": "C0TRAINING", "C0TRAINING": "C0TRAINING"})
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._ts = itertools.count(1)
        super().__init__()

    def calls(self, method: str) -> list[ReceivedRequest]:
        """Answered requests to one Web API method."""
        return [r for r in self.requests if r.path.endswith(f"/{method}")]

    def handle(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return answer(200, {"ok": False, "error": "invalid_auth"})
        method = request.path.rsplit("/", 1)[-1]
        if method == "auth.test":
            return answer(200, {"ok": True, "team": "Lab", "user": "afs-bot"})
        body = request.json()
        if method == "chat.postMessage":
            channel = self.channels.get(body.get("channel", ""))
            if channel is None:
                return answer(200, {"ok": False, "error": "channel_not_found"})
            ts = f"1764600000.{next(self._ts):06d}"
            self.messages[(channel, ts)] = body
            return answer(200, {"ok": True, "channel": channel, "ts": ts, "message": {"text": body["text"]}})
        if method == "chat.update":
            channel = body.get("channel", "")
            if channel not in self.channels.values():  # chat.update wants the id, not a name
                return answer(200, {"ok": False, "error": "channel_not_found"})
            if (channel, body.get("ts")) not in self.messages:
                return answer(200, {"ok": False, "error": "message_not_found"})
            self.messages[(channel, body["ts"])] = body
            return answer(200, {"ok": True, "channel": channel, "ts": body["ts"], "text": body["text"]})
        return answer(200, {"ok": False, "error": "unknown_method"})


class FakeNtfy(FakeService):
    """An ntfy server's JSON publish; ``version`` decides whether sequence ids replace."""

    def __init__(self, version: tuple[int, int] = (2, 16)) -> None:
        self.version = version
        #: What a subscriber's phone shows: one entry per notification, oldest first.
        self.notifications: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        super().__init__()

    def handle(self, request: ReceivedRequest) -> Reply:
        body = request.json()
        message = {"id": f"msg{next(self._ids)}", "event": "message", **body}
        sequence = body.get("sequence_id") if self.version >= (2, 16) else None
        for index, shown in enumerate(self.notifications):
            if sequence and shown.get("sequence_id") == sequence:
                self.notifications[index] = message
                break
        else:
            self.notifications.append(message)
        return answer(200, message)
