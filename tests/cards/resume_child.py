"""A resumed run in a new process: same run id, same state directory. It builds its own
outbox, Telegram channel and card dispatcher, sends one state of the run and flushes.

``python resume_child.py API_URL STATE_DIR RUN_ID EPOCH`` exits 0 when the flush finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import RunState

TOKEN = "123456789:AAHcardTOKENabcdefghijklmnopqrstuvw"


def main() -> int:
    api_url, state_dir, run_id, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    outbox = Outbox(Path(state_dir) / "outbox.sqlite3")
    cards = CardDispatcher(outbox, interval=30)
    cards.add_channel("telegram", TelegramNotifier(TOKEN, "-1001234567890", api_url=api_url))
    cards.update(RunState(run_id=run_id, model="resnet18", epoch=epoch, total_epochs=10, updated_at=1.7e9))
    done = cards.flush(10)
    cards.stop()
    outbox.close()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
