"""Background delivery through real HTTP: retries, Retry-After, permanent failures, pacing.

Every test posts to a real HTTP server on 127.0.0.1 (``LoopbackReceiver``) answering the way
a service documents: 429 with ``Retry-After``, 5xx, 404.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import threading
import time
from pathlib import Path

import pytest
from helpers.hook import (
    Gate,
    HookChannel,
    PacedHookChannel,
    event_ids,
    first_delivery_attempts,
    manager_for,
    responder_from,
    wait_until,
)

from afs_callbacks import Attachment, DeliveryResult, NotificationEvent, NotificationHandler
from afs_callbacks.channels._http import parse_retry_after
from afs_callbacks.delivery.outbox import DEAD, DELIVERED, PENDING, Claim
from afs_callbacks.delivery.sender import call_handler
from afs_callbacks.testing import LoopbackReceiver, Reply

# Retry steps so long that only a server hint or a flush can cause a second attempt in a test.
NEVER = {"retry_base": 1000.0, "retry_cap": 1000.0}


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "max_retry_after", "least_gap"),
    [
        ("0.6", 900.0, 0.55),  # decimal seconds (urllib3 would reject it)
        ("3600", 0.4, 0.35),  # an hour, capped by max_retry_after
        (http_date(3600), 0.5, 0.45),  # an HTTP date, capped
    ],
    ids=["decimal", "seconds-capped", "http-date-capped"],
)
def test_429_retry_after_is_honoured_and_capped(
    tmp_path: Path, receiver: LoopbackReceiver, retry_after: str, max_retry_after: float, least_gap: float
) -> None:
    arrivals: list[float] = []
    receiver.responder = responder_from(
        [Reply(429, {"message": "slow down"}, {"Retry-After": retry_after})], Reply(200), arrivals
    )
    manager = manager_for(
        tmp_path, {"hook": HookChannel(receiver.url("/hook"))}, max_retry_after=max_retry_after, **NEVER
    )
    sent = manager.notify("rate limited")
    assert sent is not None
    receiver.wait_for(2, timeout=10)
    assert event_ids(receiver.requests) == [sent.id, sent.id]
    # Lower bound only: the retry must not come before the server's wait.
    assert arrivals[1] - arrivals[0] >= least_gap
    assert manager.flush(10).pending == 0
    [delivery] = manager.outbox.history()[0].deliveries
    assert (delivery.state, delivery.attempts) == (DELIVERED, 2)
    manager.close()


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("2", 2, 2), ("1.25", 1.25, 1.25), ("0", 0, 0), ("date+120", 115, 121), ("date-60", 0, 0)],
)
def test_parse_retry_after(header: str, low: float, high: float) -> None:
    if header.startswith("date"):
        header = http_date(float(header[4:]))  # built now: collection can be seconds earlier
    seconds = parse_retry_after(header)
    assert seconds is not None and low <= seconds <= high


@pytest.mark.parametrize("header", [None, "", "soon", "nan"])
def test_parse_retry_after_ignores_what_it_cannot_read(header: str | None) -> None:
    assert parse_retry_after(header) is None


def test_5xx_is_retried_with_backoff_until_it_succeeds(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    receiver.responder = responder_from([Reply(503), Reply(500), Reply(502, "bad gateway")], Reply(200))
    manager = manager_for(tmp_path, {"hook": HookChannel(receiver.url("/hook"))}, retry_base=0.05)
    sent = manager.notify("flaky service")
    assert sent is not None
    receiver.wait_for(4, timeout=10)
    assert event_ids(receiver.requests) == [sent.id] * 4
    assert manager.flush(10).pending == 0
    [delivery] = manager.outbox.history()[0].deliveries
    assert (delivery.state, delivery.attempts, delivery.last_error) == (DELIVERED, 4, None)
    manager.close()


def test_404_is_permanent_disables_the_channel_and_is_reported_once(
    tmp_path: Path, receiver: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.default = Reply(404, "Unknown Webhook")
    url = receiver.url("/api/webhooks/123/secret-hook-token")
    manager = manager_for(tmp_path, {"hook": HookChannel(url)}, **NEVER)
    with caplog.at_level(logging.INFO, logger="afs_callbacks"):
        for index in range(3):
            manager.notify(f"message {index}")
        report = manager.flush(10)
    assert report.pending == 0 and report.delivered == 0  # how many died *during* the flush varies
    assert len(receiver.requests) == 1  # after the 404, nothing more is posted
    deliveries = [entry.deliveries[0] for entry in manager.outbox.history()]
    assert all(d.state == DEAD for d in deliveries)
    assert sorted(d.attempts for d in deliveries) == [0, 0, 1]
    assert all("HTTP 404: Unknown Webhook" in (d.last_error or "") for d in deliveries)
    unusable = [r for r in caplog.records if "destination is unusable" in r.getMessage()]
    assert len(unusable) == 1 and unusable[0].levelno == logging.ERROR
    assert "secret-hook-token" not in caplog.text
    manager.close()


class RaisingOnce(NotificationHandler):
    """A channel with a bug: its first send raises with a secret URL in the message."""

    name = "raising"

    def __init__(self, secret_url: str) -> None:
        self.secret_url = secret_url
        self.calls = 0

    def send(self, event: NotificationEvent) -> DeliveryResult:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError(f"could not post to {self.secret_url}")
        return DeliveryResult.delivered()


def test_a_raising_handler_is_retried_and_its_error_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = "https://hooks.slack.com/services/T0RAISE/B0RAISE/raisingSecret1"
    handler = RaisingOnce(secret_url)
    manager = manager_for(tmp_path, {"raising": handler}, **NEVER)
    with caplog.at_level(logging.INFO, logger="afs_callbacks"):
        manager.notify("first")
        wait_until(lambda: first_delivery_attempts(manager) == 1, what="the first attempt")
        [delivery] = manager.outbox.history()[0].deliveries
        assert delivery.state == PENDING
        assert delivery.last_error == "RuntimeError: could not post to https://hooks.slack.com/services/***"
        assert manager.flush(10).delivered == 1
    assert handler.calls == 2
    assert "raisingSecret1" not in caplog.text
    manager.close()


class SeedStyleHandler(NotificationHandler):
    """A handler written for the seed system: ``send`` returns a bool."""

    def __init__(self) -> None:
        self.answers = [False, True]
        self.titles: list[str] = []

    def send(self, event: NotificationEvent) -> bool:
        answer = self.answers.pop(0) if self.answers else True
        if answer:
            self.titles.append(event.title)
        return answer


def test_a_seed_style_bool_handler_works(tmp_path: Path) -> None:
    handler = SeedStyleHandler()
    assert handler.is_configured()
    manager = manager_for(tmp_path, {"seed": handler}, **NEVER)
    manager.notify_training_started("resnet", "run-1", epochs=3, batch_size=8)
    wait_until(lambda: first_delivery_attempts(manager) == 1, what="the first attempt")
    assert manager.outbox.history()[0].deliveries[0].last_error == "handler reported failure"
    assert manager.flush(10).delivered == 1
    assert handler.titles == ["Training started: resnet"]
    manager.close()


class Falsy:
    """An answer object that is false, as ``requests.Response`` is for a 5xx."""

    def __bool__(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [(None, "delivered"), (True, "delivered"), (False, "retry"), (Falsy(), "retry"), ("ok", "delivered")],
    ids=["none", "true", "false", "falsy-object", "truthy-object"],
)
def test_call_handler_reads_old_api_answers(answer: object, outcome: str) -> None:
    class Old(NotificationHandler):
        def send(self, event: NotificationEvent) -> DeliveryResult:
            return answer  # type: ignore[return-value]

    claim = Claim(NotificationEvent("test", "info", "x"), "old", 0)  # type: ignore[arg-type]
    assert call_handler(Old(), claim).outcome.value == outcome


class ReturnsNothing(NotificationHandler):
    """A handler from the old manager API: ``send`` returns nothing when it worked."""

    def __init__(self) -> None:
        self.titles: list[str] = []

    def send(self, event: NotificationEvent) -> None:  # type: ignore[override]
        self.titles.append(event.title)


def test_a_handler_returning_none_is_delivered_once(tmp_path: Path) -> None:
    handler = ReturnsNothing()
    manager = manager_for(tmp_path, {"old": handler}, **NEVER)
    for title in ("first", "second"):
        manager.notify(title)
    assert manager.flush(10).delivered == 2
    manager.flush(1)  # nothing is left to send again
    assert sorted(handler.titles) == ["first", "second"]
    assert {d.state for entry in manager.outbox.history() for d in entry.deliveries} == {DELIVERED}
    manager.close()


def test_each_channel_is_paced_to_its_min_interval(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    arrivals: list[float] = []
    receiver.responder = responder_from([], Reply(200), arrivals)
    manager = manager_for(tmp_path, {"paced": PacedHookChannel(receiver.url("/paced"))})
    for index in range(4):
        manager.notify(f"burst {index}")
    assert manager.flush(10).pending == 0  # a flush keeps to the pace too
    receiver.wait_for(4)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(gaps) == 3 and min(gaps) >= PacedHookChannel.min_interval - 0.02
    manager.close()


def test_a_slow_channel_does_not_delay_another(tmp_path: Path) -> None:
    gate = Gate()
    with LoopbackReceiver(responder=gate) as slow, LoopbackReceiver() as fast:
        manager = manager_for(
            tmp_path, {"slow": HookChannel(slow.url("/slow")), "fast": HookChannel(fast.url("/fast"))}
        )
        try:
            sent = manager.notify("to both")
            assert sent is not None
            fast.wait_for(1)
            assert gate.arrived.wait(10)  # the slow request is in flight ...
            assert slow.requests == []  # ... and unanswered while the fast one is done
        finally:
            gate.open()
        slow.wait_for(1)
        assert manager.flush(10).pending == 0
        assert {d.channel: d.state for d in manager.outbox.history()[0].deliveries} == {
            "slow": DELIVERED,
            "fast": DELIVERED,
        }
        manager.close()


def test_manager_flush_waits_out_a_429_pause_and_delivers_everything(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    arrivals: list[float] = []
    limited = Reply(429, {"message": "You are being rate limited."}, {"Retry-After": "1"})
    receiver.responder = responder_from([limited], Reply(200), arrivals)
    manager = manager_for(tmp_path, {"hook": HookChannel(receiver.url("/hook"))}, **NEVER)
    for index in range(5):
        manager.notify(f"message {index}")
    report = manager.flush(30)
    assert (report.delivered, report.pending, report.dead) == (5, 0, 0)
    assert len(arrivals) == 6  # the 429, then nothing until the pause ended, then five
    assert arrivals[1] - arrivals[0] >= 0.95
    manager.close()


class SlackPaced(HookChannel):
    """A hook paced like a Slack webhook: one message per second."""

    name = "slackpaced"
    min_interval = 1.0


def test_through_the_manager_the_end_of_a_run_overtakes_queued_epochs(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    manager = manager_for(tmp_path, {"slack": SlackPaced(receiver.url("/hook"))})
    manager.notify("Epoch 1/40", event_type="epoch_completed", run_id="r1")
    receiver.wait_for(1)
    for epoch in range(2, 41):
        manager.notify(f"Epoch {epoch}/40", event_type="epoch_completed", run_id="r1")
    manager.notify("Training completed", event_type="training_completed", run_id="r1")
    assert manager.flush(10).pending == 0
    assert [request.json()["title"] for request in receiver.requests] == ["Epoch 1/40", "Training completed"]
    states = [d.state for entry in manager.outbox.history(limit=100) for d in entry.deliveries]
    assert states.count("superseded") == 39 and len(states) == 41  # all kept in the history
    manager.close()


def test_a_flush_that_ends_does_not_end_another_still_under_way(tmp_path: Path) -> None:
    """Two flushes at once (a crash report's and the exit's, say): the short one giving up
    must not make the long one return before its message was sent."""
    gate = Gate()
    with LoopbackReceiver(responder=gate) as service:
        manager = manager_for(tmp_path, {"hook": HookChannel(service.url("/hook"))}, **NEVER)
        manager.notify("held by the service")
        reports: list[int] = []
        long = threading.Thread(target=lambda: reports.append(manager.flush(30).pending))
        long.start()
        assert gate.arrived.wait(10)  # the message is in flight
        assert manager.flush(0.2).pending == 1  # the short flush gives up
        long.join(0.5)
        assert long.is_alive()  # ...and the long one still waits for the send
        gate.open()
        long.join(30)
        assert reports == [0]
        manager.close()


class NoFiles(NotificationHandler):
    """A service that takes no attachments (a 413 for a file), or none at all."""

    name = "nofiles"

    def __init__(self, *, refuse_text_too: bool = False) -> None:
        self.refuse_text_too = refuse_text_too
        self.sent: list[NotificationEvent] = []

    def send(self, event: NotificationEvent) -> DeliveryResult:
        self.sent.append(event)
        if event.attachments:
            return DeliveryResult.refused_attachment("HTTP 413: file too large")
        if self.refuse_text_too:
            return DeliveryResult.permanent("HTTP 400: bad request")
        return DeliveryResult.delivered()


def chart_event() -> NotificationEvent:
    chart = Attachment("loss_curve.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return NotificationEvent(
        "training_completed", "success", "Training completed: resnet", attachments=(chart,)
    )


def test_a_refused_attachment_sends_the_message_again_without_it_once_and_notes_it(tmp_path: Path) -> None:
    handler = NoFiles()
    manager = manager_for(tmp_path, {"nofiles": handler}, **NEVER)
    event = manager.emit(chart_event())
    assert event is not None and manager.flush(10).delivered == 1
    assert [len(sent.attachments) for sent in handler.sent] == [1, 0]
    assert {sent.id for sent in handler.sent} == {event.id}  # the same message, idempotency key kept
    [delivery] = manager.outbox.history()[0].deliveries
    assert delivery.state == DELIVERED and delivery.attempts == 1
    assert delivery.last_error == (
        "sent without its attachment, which the service refused (HTTP 413: file too large)"
    )
    manager.close()


def test_a_message_refused_without_its_attachment_too_is_dead_with_both_reasons(tmp_path: Path) -> None:
    handler = NoFiles(refuse_text_too=True)
    manager = manager_for(tmp_path, {"nofiles": handler}, **NEVER)
    manager.emit(chart_event())
    manager.flush(10)
    assert len(handler.sent) == 2  # once with, once without: never more
    [delivery] = manager.outbox.history()[0].deliveries
    assert delivery.state == DEAD
    assert delivery.last_error == "HTTP 400: bad request (after the service refused the attachment)"
    manager.close()


def test_a_refusal_without_an_attachment_is_an_ordinary_permanent_failure(tmp_path: Path) -> None:
    class Odd(NoFiles):
        def send(self, event: NotificationEvent) -> DeliveryResult:
            self.sent.append(event)
            return DeliveryResult.refused_attachment("HTTP 413")

    handler = Odd()
    manager = manager_for(tmp_path, {"odd": handler}, **NEVER)
    manager.notify("no chart here")
    manager.flush(10)
    assert len(handler.sent) == 1
    assert manager.outbox.history()[0].deliveries[0].state == DEAD
    manager.close()
