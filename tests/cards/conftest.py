"""Fixtures of the card tests: fake services on loopback, a real outbox, a fake clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import RunState
from tests.cards.services import FakeDiscord, FakeSlack, FakeTelegram

TELEGRAM_TOKEN = "123456789:AAHcardTOKENabcdefghijklmnopqrstuvw"
CHAT = "-1001234567890"
SLACK_TOKEN = "xoxb-1234-5678-cardSECRETtoken"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def state(run_id: str = "run-1", **changes: object) -> RunState:
    """A running state with a few facts (override any field)."""
    values: dict[str, object] = {
        "model": "resnet18",
        "host": "gpu-node-7",
        "started_at": 1_764_600_000.0,
        "updated_at": 1_764_600_060.0,
        "epoch": 1,
        "total_epochs": 10,
        "metrics": {"val_loss": 0.9},
        "monitor": "val_loss",
    }
    values.update(changes)
    return RunState(run_id=run_id, **values)  # type: ignore[arg-type]


def drain(dispatcher: CardDispatcher, clock: FakeClock) -> float | None:
    """Send everything due at the clock's time; return when the next send is due."""
    for _ in range(100):
        due = dispatcher.run_due()
        if due is None or due > clock.now:
            return due
    raise AssertionError("run_due kept finding work: a loop that never settles")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(Path(os.environ["AFS_STATE_DIR"]) / "outbox.sqlite3")
    yield box
    box.close()


@pytest.fixture
def bot_api() -> Iterator[FakeTelegram]:
    service = FakeTelegram(TELEGRAM_TOKEN)
    yield service
    service.close()


@pytest.fixture
def telegram(bot_api: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> TelegramNotifier:
    """A Telegram channel on the fake Bot API, its 1 s pacing off (tests pace by the clock)."""
    monkeypatch.setattr(TelegramNotifier, "min_interval", 0.0)
    return TelegramNotifier(TELEGRAM_TOKEN, CHAT, api_url=bot_api.url(""))


@pytest.fixture
def discord_service() -> Iterator[FakeDiscord]:
    service = FakeDiscord()
    yield service
    service.close()


@pytest.fixture
def slack_service() -> Iterator[FakeSlack]:
    service = FakeSlack(SLACK_TOKEN)
    yield service
    service.close()
