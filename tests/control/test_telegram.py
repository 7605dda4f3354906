"""Telegram as a control surface, against a loopback Bot API that implements getUpdates
(long poll, offsets, 409 for a second consumer or a webhook, 429), callback_query and
answerCallbackQuery as documented (tests/control/telegram_api.py).

A real custom-loop training (RunNotifier, a tiny torch model) runs on a thread; the test
taps buttons and sends commands as a phone would, and reads what the bot answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import NotificationManager, Settings
from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.control import telegram as control_telegram
from afs_callbacks.runstate import run_token
from tests.control.support import commands
from tests.control.telegram_api import TOKEN, FakeBotAPI
from tests.dashboard.support import wait_for

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

CHAT = 4242  # a private chat: its id is its user's
USER = 4242


@pytest.fixture
def bot() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as api:
        yield api


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Short long polls and back-offs, so a test does not wait out Telegram's real ones;
    every poller stops after its test."""
    monkeypatch.setattr(control_telegram, "POLL_SECONDS", 1)
    monkeypatch.setattr(control_telegram, "BACKOFF", (0.5, 2.0))
    yield
    for poller in list(control_telegram._pollers.values()):
        poller.stop(timeout=5)
    control_telegram._pollers.clear()


def make_manager(bot: FakeBotAPI, state_dir: Path, **settings: Any) -> NotificationManager:
    channel = TelegramNotifier(TOKEN, str(CHAT), api_url=bot.url("").rstrip("/"))
    options: dict[str, Any] = {"state_dir": state_dir, "control": ("telegram",), "card_interval": 0.5}
    options.update(settings)
    return NotificationManager({"telegram": channel}, settings=Settings(**options))


class Training(threading.Thread):
    """A custom loop (RunNotifier) on a thread: a tiny model, 20 ms steps, saving when a
    checkpoint is asked, leaving when a stop is."""

    def __init__(self, manager: NotificationManager, folder: Path, steps: int = 1500) -> None:
        super().__init__(name="test-training", daemon=True)
        self.manager, self.folder, self.steps = manager, folder, steps
        self.stopped_at: int | None = None
        self.saved: list[Path] = []
        self.run_id: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from afs_callbacks.integrations.loop import RunNotifier

        try:
            model = torch.nn.Linear(2, 1)
            with RunNotifier(
                self.manager,
                model_name="tiny",
                total_steps=self.steps,
                monitors=False,
                chart=False,
                crash_hook=False,
            ) as run:
                self.run_id = run.tracker.run_id
                for step in range(1, self.steps + 1):
                    time.sleep(0.02)
                    stop = run.step(loss=model(torch.rand(4, 2)).pow(2).mean())
                    if run.checkpoint_requested:
                        path = self.folder / f"step{step}.pt"
                        torch.save(model.state_dict(), path)
                        self.saved.append(path)
                        run.checkpoint(path)
                    if stop:
                        self.stopped_at = step
                        break
        except BaseException as error:
            self.error = error

    def finish(self) -> None:
        self.join(60)
        assert not self.is_alive() and self.error is None, self.error


def card_with_buttons(bot: FakeBotAPI) -> dict[str, Any]:
    """The live card once it carries the control buttons."""

    def found() -> dict[str, Any] | None:
        for message in bot.sent():
            if "afs:s:" in str(message.get("reply_markup") or ""):
                return message
        return None

    return wait_for(found, timeout=30, what="the card's buttons")


def answer_to(bot: FakeBotAPI, count: int) -> dict[str, Any]:
    return wait_for(lambda: len(bot.answers) >= count and bot.answers[count - 1], what="answerCallbackQuery")


def test_a_stop_tapped_under_the_card_and_confirmed_stops_the_run(bot: FakeBotAPI, tmp_path: Path) -> None:
    manager = make_manager(bot, tmp_path / "state")
    training = Training(manager, tmp_path)
    training.start()
    card = card_with_buttons(bot)
    buttons = [b["callback_data"] for b in card["reply_markup"]["inline_keyboard"][0]]
    token = run_token(training.run_id or "")
    assert buttons == [f"afs:s:{token}", f"afs:c:{token}", f"afs:i:{token}"]
    assert all(len(b.encode()) <= 64 for b in buttons)

    bot.tap(USER, CHAT, buttons[0], message_id=card["message_id"])
    assert answer_to(bot, 1)["text"] == "Confirm below."
    question = wait_for(
        lambda: [m for m in bot.sent() if "afs:y:" in str(m.get("reply_markup"))], what="the question"
    )[0]
    assert "Stop <b>tiny</b>" in question["text"]
    time.sleep(1.0)
    assert training.is_alive() and training.stopped_at is None  # a tap alone stops nothing

    yes = question["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    bot.tap(USER, CHAT, yes, message_id=question["message_id"])
    assert answer_to(bot, 2)["text"] == "Stopping at the run's next step."
    training.finish()
    assert training.stopped_at is not None and training.stopped_at < 1000
    assert training.saved, "the loop saves when a stop asks it to"
    manager.flush(10)
    [stop] = [c for c in commands(tmp_path / "state") if c.action == "stop"]
    assert (stop.source, stop.actor, stop.state) == ("telegram", f"telegram user {USER} (@alice)", "done")
    wait_for(lambda: any("✅" in m["text"] and "stop" in m["text"] for m in bot.sent()), what="the follow-up")
    final = bot.messages[card["message_id"]]
    wait_for(
        lambda: "reply_markup" not in bot.messages[card["message_id"]],
        what="buttons gone from the ended run's card",
    )
    assert "Command:" in final["text"] or "Command" in bot.messages[card["message_id"]]["text"]
    manager.close()


def test_a_tap_from_another_chat_is_refused_and_kept(bot: FakeBotAPI, tmp_path: Path) -> None:
    manager = make_manager(bot, tmp_path / "state")
    training = Training(manager, tmp_path, steps=400)
    training.start()
    card = card_with_buttons(bot)
    stop = card["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    bot.tap(999, -100999, stop, message_id=card["message_id"], username="mallory")
    text = answer_to(bot, 1)["text"]
    assert text.startswith("Refused:") and "not the configured chat" in text
    refused = wait_for(lambda: commands(tmp_path / "state"), what="the refused command")
    assert [(c.action, c.state, c.actor) for c in refused] == [
        ("stop", "refused", "telegram user 999 (@mallory)")
    ]
    assert training.is_alive()
    training.finish()
    assert training.stopped_at is None  # it ran to its end
    manager.close()


def test_only_the_asker_confirms_and_an_unconfirmed_stop_stops_nothing(
    bot: FakeBotAPI, tmp_path: Path
) -> None:
    manager = make_manager(bot, tmp_path / "state")
    training = Training(manager, tmp_path, steps=300)
    training.start()
    card = card_with_buttons(bot)
    bot.tap(USER, CHAT, card["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    question = wait_for(
        lambda: [m for m in bot.sent() if "afs:y:" in str(m.get("reply_markup"))], what="question"
    )[0]
    yes = question["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    bot.tap(USER + 1, CHAT, yes, username="bob")  # someone else in the chat: not the asker
    assert answer_to(bot, 2)["text"] == "Only telegram user 4242 (@alice) can answer this."
    training.finish()
    assert training.stopped_at is None
    [stop] = [c for c in commands(tmp_path / "state") if c.action == "stop"]
    assert stop.state == "unconfirmed"
    manager.close()


def test_text_commands_checkpoint_and_a_stale_one_is_ignored(bot: FakeBotAPI, tmp_path: Path) -> None:
    manager = make_manager(bot, tmp_path / "state")
    training = Training(manager, tmp_path, steps=600)
    training.start()
    card_with_buttons(bot)
    bot.say(USER, CHAT, f"/stop {training.run_id}", date=time.time() - 3600)  # an hour late
    bot.say(USER, CHAT, "/status")
    listed = wait_for(lambda: [m for m in bot.sent() if m["text"].startswith("<b>Runs on")], what="/status")
    assert training.run_id in listed[0]["text"]
    bot.say(USER, CHAT, "/checkpoint tiny")  # a part of the id only one live run has
    saved = wait_for(
        lambda: [m for m in bot.sent() if "checkpoint saved" in m["text"]], what="the checkpoint"
    )
    assert str(training.saved[0]) in saved[0]["text"]
    training.finish()
    assert training.stopped_at is None  # the stale /stop did nothing
    kept = [(c.action, c.state) for c in commands(tmp_path / "state")]
    assert kept == [("stop", "refused"), ("checkpoint", "done")]  # the late one kept, refused
    manager.close()


def test_one_poller_per_host_and_a_second_consumer_backs_off(
    bot: FakeBotAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="afs_callbacks")
    first = make_manager(bot, tmp_path / "state")
    same_host = make_manager(bot, tmp_path / "state")  # another process of the host: same lock
    policy = control_telegram.ControlPolicy(surfaces=("telegram",))
    one = control_telegram.TelegramPoller(first.handlers["telegram"], first, policy)  # type: ignore[arg-type]
    two = control_telegram.TelegramPoller(same_host.handlers["telegram"], same_host, policy)  # type: ignore[arg-type]
    one.start()
    two.start()
    try:
        wait_for(lambda: one.polling, what="the first poller")
        assert not two.polling  # the host's lock is taken
        # Another host with the same bot (its own state dir, so its own lock): 409s.
        other = make_manager(bot, tmp_path / "elsewhere")
        three = control_telegram.TelegramPoller(other.handlers["telegram"], other, policy)  # type: ignore[arg-type]
        three.start()
        wait_for(lambda: bot.conflicts >= 2, timeout=20, what="409 conflicts")
        wait_for(lambda: "another process polls this bot" in caplog.text, what="the warning")
        assert caplog.text.count("another process polls this bot") <= 2  # once per poller
        started = len(bot.calls("getUpdates"))
        time.sleep(3)
        assert len(bot.calls("getUpdates")) - started < 12  # backing off, not hammering
        three.stop()
        other.close()
    finally:
        one.stop()
        two.stop()
        first.close()
        same_host.close()


def test_a_webhook_stops_polling_and_429_is_honoured(
    bot: FakeBotAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="afs_callbacks")
    manager = make_manager(bot, tmp_path / "state")
    policy = control_telegram.ControlPolicy(surfaces=("telegram",))
    bot.rate_limit_next = 2
    poller = control_telegram.TelegramPoller(manager.handlers["telegram"], manager, policy)  # type: ignore[arg-type]
    poller.start()
    try:
        wait_for(lambda: len(bot.calls("getUpdates")) >= 2, what="a call after the 429")
        first, second = bot.calls("getUpdates")[:2]
        assert first.status == 429 and second.status == 200
        assert bot.requests.index(second) > bot.requests.index(first)
        poller.stop()
        monkeypatch.setattr(control_telegram, "BACKOFF", (0.5, 60.0))
        bot.webhook = "https://example.org/hook"
        again = control_telegram.TelegramPoller(manager.handlers["telegram"], manager, policy)  # type: ignore[arg-type]
        control_telegram._pollers[("x", "y")] = again
        again.start()
        wait_for(lambda: "webhook set" in caplog.text, what="the webhook warning")
        count = len(bot.calls("getUpdates"))
        time.sleep(2)
        assert len(bot.calls("getUpdates")) == count  # waits long; never deletes the webhook
        assert bot.webhook is not None and not bot.calls("deleteWebhook")
    finally:
        manager.close()
