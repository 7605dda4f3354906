"""A resumed run (same run id, same state directory) in a NEW process edits the card the
first process posted: the message id survives in the outbox's ``cards`` table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from tests.cards.conftest import TELEGRAM_TOKEN, state
from tests.cards.services import FakeTelegram

CHILD = Path(__file__).with_name("resume_child.py")
ROOT = Path(__file__).resolve().parents[2]


def test_a_resumed_run_in_a_new_process_edits_the_same_card(
    outbox: Outbox, telegram: TelegramNotifier, bot_api: FakeTelegram
) -> None:
    cards = CardDispatcher(outbox, interval=30)
    cards.add_channel("telegram", telegram)
    cards.update(state("resumed-run", epoch=3))
    assert cards.flush(5)
    cards.stop()
    assert outbox.card_id("resumed-run", "telegram") == "100"

    state_dir = os.environ["AFS_STATE_DIR"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(CHILD), bot_api.url(""), state_dir, "resumed-run", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(bot_api.calls("sendMessage")) == 1  # no second card
    [edit] = bot_api.calls("editMessageText")
    assert edit.json()["message_id"] == 100
    assert "epoch 5/10" in bot_api.messages[100]["text"]
    assert TELEGRAM_TOKEN not in done.stderr + done.stdout
