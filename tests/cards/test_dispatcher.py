"""CardDispatcher: latest wins, paced edits, outages, rate limits, deleted cards, the storm
bound. A real Telegram channel talks to a loopback Bot API and ids live in a real SQLite
outbox; most tests drive :meth:`CardDispatcher.run_due` with a fake clock (no thread), the
storm and flush tests run the real thread on the real clock.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import NotificationEvent
from afs_callbacks.runstate import COMPLETED, FAILED
from tests.cards.conftest import FakeClock, drain, state
from tests.cards.services import FakeTelegram, telegram_rate_limit


def cards(
    outbox: Outbox, telegram: TelegramNotifier, clock: FakeClock, interval: float = 30.0
) -> CardDispatcher:
    dispatcher = CardDispatcher(outbox, interval=interval, clock=clock, threaded=False)
    assert dispatcher.add_channel("telegram", telegram)
    return dispatcher


def shown(bot_api: FakeTelegram) -> str:
    """The text of the only card in the chat."""
    [message] = bot_api.messages.values()
    return str(message["text"])


def test_the_first_state_posts_at_once_and_edits_wait_for_the_interval(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state(epoch=1))
    assert drain(dispatcher, clock) is None
    [post] = bot_api.calls("sendMessage")
    assert post.json()["disable_notification"] is True  # a card never buzzes
    assert outbox.card_id("run-1", "telegram") == "100"

    dispatcher.update(state(epoch=2))
    assert drain(dispatcher, clock) == clock.now + 30  # due at the interval, not before
    assert bot_api.calls("editMessageText") == []
    clock.advance(30)
    assert drain(dispatcher, clock) is None
    [edit] = bot_api.calls("editMessageText")
    assert edit.json()["message_id"] == 100 and "epoch 2/10" in shown(bot_api)


def test_a_newer_state_replaces_an_unsent_one(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state(epoch=1))
    drain(dispatcher, clock)
    for epoch in range(2, 9):
        dispatcher.update(state(epoch=epoch))
    clock.advance(30)
    drain(dispatcher, clock)
    [edit] = bot_api.calls("editMessageText")
    assert "epoch 8/10" in edit.json()["text"]


def test_a_final_state_goes_out_at_once(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state(epoch=1))
    drain(dispatcher, clock)
    clock.advance(1)
    dispatcher.update(
        state(status=COMPLETED, epoch=10, ended_at=1_764_600_600.0, summary="best val_loss 0.3")
    )
    assert drain(dispatcher, clock) is None
    assert len(bot_api.calls("editMessageText")) == 1
    assert "✅ resnet18 · completed" in shown(bot_api) and "best val_loss 0.3" in shown(bot_api)


def test_an_outage_ends_with_one_catching_up_edit(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state(epoch=1))
    drain(dispatcher, clock)
    bot_api.down = True
    for epoch in range(2, 8):  # six minutes of progress while the service is down
        clock.advance(60)
        dispatcher.update(state(epoch=epoch))
        drain(dispatcher, clock)
    failed = [r for r in bot_api.calls("editMessageText") if r.status == 503]
    assert 1 <= len(failed) <= 6  # retried with backoff, never a backlog of one per state
    bot_api.down = False
    clock.advance(301)  # past the longest backoff
    assert drain(dispatcher, clock) is None
    delivered = [r for r in bot_api.calls("editMessageText") if r.status == 200]
    assert len(delivered) == 1
    assert "epoch 7/10" in delivered[0].json()["text"]


def test_retry_after_pauses_the_card(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    bot_api.fail(*telegram_rate_limit(7))
    dispatcher.update(state())
    due = drain(dispatcher, clock)
    assert due == clock.now + 7
    clock.advance(6.9)
    drain(dispatcher, clock)
    assert len(bot_api.calls("sendMessage")) == 1  # only the refused one
    clock.advance(0.1)
    drain(dispatcher, clock)
    assert [r.status for r in bot_api.calls("sendMessage")] == [429, 200]


def test_a_deleted_card_is_posted_anew(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state(epoch=1))
    drain(dispatcher, clock)
    bot_api.messages.clear()  # someone deleted the card
    clock.advance(30)
    dispatcher.update(state(epoch=2))
    drain(dispatcher, clock)
    assert [r.status for r in bot_api.calls("editMessageText")] == [400]
    assert len(bot_api.calls("sendMessage")) == 2
    assert outbox.card_id("run-1", "telegram") == "101"
    assert "epoch 2/10" in shown(bot_api)


def test_an_unchanged_card_counts_as_delivered(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    same = state()
    dispatcher.update(same)
    drain(dispatcher, clock)
    dispatcher.update(same)
    clock.advance(30)
    assert drain(dispatcher, clock) is None  # delivered: nothing left to retry
    assert [r.status for r in bot_api.calls("editMessageText")] == [400]
    assert outbox.card_id("run-1", "telegram") == "100"


def test_each_run_has_its_own_card(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = cards(outbox, telegram, clock)
    dispatcher.update(state("run-a"))
    dispatcher.update(state("run-b", status=FAILED, error_type="RuntimeError", error="CUDA out of memory"))
    drain(dispatcher, clock)
    assert {outbox.card_id("run-a", "telegram"), outbox.card_id("run-b", "telegram")} == {"100", "101"}
    assert (
        "RuntimeError: CUDA out of memory"
        in bot_api.messages[int(outbox.card_id("run-b", "telegram") or 0)]["text"]
    )


class _CannotEdit(NotificationHandler):
    name = "plain"

    def send(self, event: NotificationEvent) -> DeliveryResult:
        return DeliveryResult.delivered()


def test_channels_that_cannot_edit_get_no_card(outbox: Outbox) -> None:
    dispatcher = CardDispatcher(outbox, interval=1, threaded=False)
    assert not dispatcher.add_channel("plain", _CannotEdit())
    dispatcher.update(state())
    assert dispatcher.run_due() is None and dispatcher.channels == []


def test_an_edit_storm_is_bounded(outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram) -> None:
    """10,000 epochs in about a second and a half: at most duration / interval + 2 requests."""
    interval = 0.25
    dispatcher = CardDispatcher(outbox, interval=interval)
    dispatcher.add_channel("telegram", telegram)
    started = time.monotonic()
    for epoch in range(1, 10_001):
        dispatcher.update(state(epoch=epoch, total_epochs=10_000))
        if epoch % 1000 == 0:
            time.sleep(0.15)  # the training's own work between bursts of epochs
    dispatcher.update(state(status=COMPLETED, epoch=10_000, total_epochs=10_000))
    assert dispatcher.flush(5)
    duration = time.monotonic() - started
    dispatcher.stop()
    requests = len(bot_api.requests)
    assert 2 <= requests <= duration / interval + 2, (requests, duration)
    assert "completed" in shown(bot_api) and "epoch 10,000/10,000" in shown(bot_api)


def test_flush_sends_the_final_state_and_stop_ends_the_thread(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram
) -> None:
    dispatcher = CardDispatcher(outbox, interval=3600)
    dispatcher.add_channel("telegram", telegram)
    dispatcher.update(state(epoch=1))
    bot_api.wait_for(1)
    dispatcher.update(state(epoch=2))  # waits for the hour-long interval...
    dispatcher.update(state(status=COMPLETED, epoch=10))  # ...but the end does not
    assert dispatcher.flush(5)
    assert "completed" in shown(bot_api)
    dispatcher.stop(timeout=5)
    dispatcher.update(state(epoch=3))  # ignored after stop
    assert len(bot_api.requests) == 2


def test_flush_gives_up_at_its_timeout_while_the_service_is_down(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram
) -> None:
    bot_api.down = True
    dispatcher = CardDispatcher(outbox, interval=1)
    dispatcher.add_channel("telegram", telegram)
    dispatcher.update(state(status=COMPLETED))
    started = time.monotonic()
    assert not dispatcher.flush(0.5)
    assert time.monotonic() - started < 2.0
    dispatcher.stop()


@pytest.mark.parametrize("interval", [-1.0, float("nan"), float("inf")])
def test_a_bad_interval_is_refused(outbox: Outbox, interval: float) -> None:
    with pytest.raises(ValueError, match=r"CardDispatcher\(interval="):
        CardDispatcher(outbox, interval=interval)


class _FlakyStore:
    """The outbox, whose first read fails as a locked database would (a real lock would
    hold the test for the outbox's 10 s busy timeout)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox, self.failures = outbox, 1

    def card_id(self, run_id: str, channel: str) -> str | None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.outbox.card_id(run_id, channel)

    def save_card_id(self, run_id: str, channel: str, message_id: str) -> None:
        self.outbox.save_card_id(run_id, channel, message_id)

    def forget_card(self, run_id: str, channel: str) -> None:
        self.outbox.forget_card(run_id, channel)


def test_a_locked_store_delays_the_card_without_losing_it(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram, clock: FakeClock
) -> None:
    dispatcher = CardDispatcher(_FlakyStore(outbox), interval=30, clock=clock, threaded=False)
    dispatcher.add_channel("telegram", telegram)
    dispatcher.update(state())
    assert drain(dispatcher, clock) == clock.now + 1  # looks again in a second, no busy loop
    assert bot_api.requests == []
    clock.advance(1)
    assert drain(dispatcher, clock) is None
    assert outbox.card_id("run-1", "telegram") == "100"


def test_update_never_waits_for_a_slow_service(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram
) -> None:
    bot_api.delay = 1.0  # every answer takes a second
    dispatcher = CardDispatcher(outbox, interval=0)
    dispatcher.add_channel("telegram", telegram)
    dispatcher.update(state(epoch=1))
    started = time.perf_counter()
    for epoch in range(2, 1002):
        dispatcher.update(state(epoch=epoch))
    assert time.perf_counter() - started < 0.5  # a thousand updates while a send is in flight
    assert dispatcher.flush(10)
    dispatcher.stop()
    assert "epoch 1,001/10" in shown(bot_api)
