"""The desktop card on a real private D-Bus session bus: one bubble, replaced in place
(``replaces_id``), served by tests/cards/dbus_server.py, which follows the freedesktop
spec. macOS and Windows cannot update a notification in place: no card there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from afs_callbacks.channels.desktop import DesktopNotifier
from afs_callbacks.delivery.live_cards import CardDispatcher
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import COMPLETED
from tests.cards.conftest import state
from tests.channels.test_desktop import read_line, start_bus, stop

pytest.importorskip("jeepney")
pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (apt: dbus)")
SERVER = Path(__file__).with_name("dbus_server.py")


def test_the_card_is_one_bubble_replaced_in_place_and_closed_at_the_end(tmp_path: Path) -> None:
    """The run's end message is the end's one bubble (it sounds): the card's goes."""
    bus = start_bus(tmp_path)
    record = tmp_path / "cards.jsonl"
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(record), bus.address], stdout=subprocess.PIPE, text=True
    )
    bus.processes.append(server)
    try:
        assert server.stdout is not None and read_line(server.stdout) == "ready"
        desktop = DesktopNotifier(bus_address=bus.address, backend="dbus")
        assert desktop.supports_cards
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        cards = CardDispatcher(outbox, interval=0)
        cards.add_channel("desktop", desktop)
        cards.update(state(epoch=1))
        assert cards.flush(10)
        cards.update(state(epoch=2, step=40))
        assert cards.flush(10)
        cards.update(state(status=COMPLETED, epoch=10))
        assert cards.flush(10)
        cards.stop()
        calls = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
        assert [(c["replaces_id"], c["id"]) for c in calls[:2]] == [(0, 1), (1, 1)]
        assert "step 40" in calls[1]["body"]
        assert all(c["hints"].get("suppress-sound") is True for c in calls[:2])  # a card never sounds
        assert calls[2:] == [{"closed": 1}]
        assert outbox.card_id("run-1", "desktop") == "1"
        outbox.close()
    finally:
        stop(bus)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_no_card_where_a_bubble_cannot_be_replaced(platform: str) -> None:
    assert not DesktopNotifier(platform=platform).supports_cards
    assert not DesktopNotifier(backend="notify-send").supports_cards
