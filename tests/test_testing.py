"""The public testing helpers users rely on: capturing channel, throwaway manager, receiver."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import requests

from afs_callbacks import DeliveryResult, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.testing import (
    CapturingHandler,
    LoopbackReceiver,
    ReceivedRequest,
    Reply,
    capturing_manager,
)


def an_event(title: str = "x") -> NotificationEvent:
    return NotificationEvent(EventType.TEST, NotificationLevel.INFO, title)


def test_capturing_handler_follows_its_script_then_delivers() -> None:
    handler = CapturingHandler([DeliveryResult.retry("busy"), DeliveryResult.permanent("no")])
    answers = [handler.send(an_event(str(i))) for i in range(3)]
    assert [a.outcome.value for a in answers] == ["retry", "permanent", "delivered"]
    assert handler.attempts == 3
    assert [e.title for e in handler.events] == ["2"]  # only what was delivered


def test_capturing_handler_wait_for_says_what_did_arrive() -> None:
    handler = CapturingHandler()
    handler.send(an_event("only this"))
    assert handler.wait_for(lambda e: e.title == "only this")[0].title == "only this"
    with pytest.raises(AssertionError, match=r"expected 2 matching event\(s\).*got 1.*only this"):
        handler.wait_for(count=2, timeout=0.05)


def test_capturing_manager_delivers_through_the_real_pipeline(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path, dedup_window=0, max_attempts=2)
    assert manager.settings.max_attempts == 2
    sent = manager.notify("hello", run_id="r1")
    [got] = captured.wait_for()
    assert sent is not None and got.id == sent.id and got.run_id == "r1"
    assert (tmp_path / "outbox.sqlite3").exists()
    manager.close()


def test_capturing_manager_rejects_unknown_settings(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        capturing_manager(tmp_path, no_such_setting=1)


def test_receiver_records_requests_and_answers_queue_then_responder_then_default() -> None:
    def responder(request: ReceivedRequest) -> Reply | None:
        return Reply(202, "from responder") if request.path == "/r" else None

    with LoopbackReceiver(default=Reply(204), responder=responder) as receiver:
        receiver.reply(Reply(429, {"retry_after": 1.5}, {"Retry-After": "2"}))
        first = requests.post(receiver.url("/q?x=1&x=2"), json={"a": 1}, headers={"X-Test": "yes"}, timeout=5)
        second = requests.post(receiver.url("/r"), data=b"raw", timeout=5)
        third = requests.get(receiver.url("/other"), timeout=5)
        assert (first.status_code, first.headers["Retry-After"], first.json()) == (
            429,
            "2",
            {"retry_after": 1.5},
        )
        assert first.headers["Content-Type"] == "application/json"
        assert (second.status_code, second.text) == (202, "from responder")
        assert third.status_code == 204
        got = receiver.wait_for(3)
        assert [r.method for r in got] == ["POST", "POST", "GET"]
        assert got[0].path == "/q" and got[0].query == {"x": ["1", "2"]}
        assert got[0].json() == {"a": 1} and got[0].headers["X-Test"] == "yes"
        assert got[1].body == b"raw"
        assert receiver.wait_for(predicate=lambda r: r.method == "GET")[0].path == "/other"
        with pytest.raises(AssertionError, match="expected 4 request"):
            receiver.wait_for(4, timeout=0.05)


def test_receiver_delay_answers_late() -> None:
    with LoopbackReceiver() as receiver:
        receiver.reply(Reply(200, "late", delay=0.05))
        assert requests.post(receiver.url("/"), timeout=5).text == "late"


def test_receiver_wide_delay_slows_every_answer_and_can_change_while_running() -> None:
    with LoopbackReceiver(delay=0.6) as receiver:
        start = time.monotonic()
        receiver.reply(Reply(201, delay=0.2))
        assert requests.post(receiver.url("/"), timeout=5).status_code == 201
        assert time.monotonic() - start >= 0.8  # the receiver's delay and the reply's
        receiver.delay = 0.0
        start = time.monotonic()
        assert requests.get(receiver.url("/"), timeout=5).text == "ok"
        assert time.monotonic() - start < 0.6


def test_receiver_answers_patch_as_a_service_that_edits_messages() -> None:
    def responder(request: ReceivedRequest) -> Reply:
        return Reply(200, {"edited": request.path}) if request.method == "PATCH" else Reply(405)

    with LoopbackReceiver(responder=responder) as receiver:
        answer = requests.patch(receiver.url("/messages/7"), json={"text": "new"}, timeout=5)
        assert answer.json() == {"edited": "/messages/7"}
        [request] = receiver.requests
        assert (request.method, request.status, request.json()) == ("PATCH", 200, {"text": "new"})


def test_receiver_refuses_connections_once_closed() -> None:
    receiver = LoopbackReceiver()
    port = receiver.port
    receiver.close()
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
