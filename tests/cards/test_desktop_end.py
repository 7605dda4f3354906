"""The end of a run on a real Linux desktop: Debian's dunst under Xvfb, on a private D-Bus
session bus, read back with ``dunstctl``. The live card is one bubble updated in place while
the run goes; at the end it is closed (``CloseNotification``; dunst moves it to its
history) and the end message is the one bubble left about the end, with its sound and
urgency: never the card and the completion side by side.

A screenshot of the screen at the end is kept under the test's tmp path (and in
``DESKTOP_SCREENSHOTS=DIR`` when set) where ImageMagick's ``import`` is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks.channels.desktop import DesktopNotifier
from afs_callbacks.config import Settings
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.manager import NotificationManager
from tests.channels.test_desktop import Bus, read_line, start_bus, stop

pytest.importorskip("jeepney")
torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("dbus-daemon", "Xvfb", "dunst", "dunstctl")),
        reason="needs dbus, xvfb and dunst (apt-get install dbus xvfb dunst)",
    ),
]
#: Read at import: the tests' environment is cleared of DESKTOP_* settings.
KEEP_SCREENSHOTS = os.environ.get("DESKTOP_SCREENSHOTS")
#: Bubbles stay until dismissed, so what is on screen at the end is all that was left.
DUNSTRC = """[global]
    font = DejaVu Sans 10
    width = 420
    origin = top-right
    notification_limit = 0
    idle_threshold = 0
[urgency_low]
    timeout = 0
[urgency_normal]
    timeout = 0
[urgency_critical]
    timeout = 0
"""


def wait_for(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def screen(tmp_path: Path) -> Iterator[tuple[Bus, str]]:
    """A private session bus with dunst drawing on an Xvfb screen: (bus, DISPLAY)."""
    bus = start_bus(tmp_path)
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
        stdout=subprocess.PIPE,
        text=True,
    )
    bus.processes.append(xvfb)
    try:
        assert xvfb.stdout is not None
        display = f":{read_line(xvfb.stdout)}"
        (tmp_path / "dunstrc").write_text(DUNSTRC)
        env = {**os.environ, "DISPLAY": display, "DBUS_SESSION_BUS_ADDRESS": bus.address}
        bus.processes.append(
            subprocess.Popen(
                ["dunst", "-config", str(tmp_path / "dunstrc")], env=env, stderr=subprocess.DEVNULL
            )
        )
        wait_for(lambda: _dunstctl(bus, "count", "displayed") is not None)
        yield bus, display
    finally:
        stop(bus)


def _dunstctl(bus: Bus, *args: str) -> str | None:
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus.address}
    done = subprocess.run(["dunstctl", *args], env=env, capture_output=True, text=True, timeout=10)
    return done.stdout.strip() if done.returncode == 0 else None


def test_the_end_leaves_one_bubble_not_the_card_and_the_completion(
    screen: tuple[Bus, str], tmp_path: Path
) -> None:
    bus, display = screen
    desktop = DesktopNotifier(bus_address=bus.address, backend="dbus", timeout=0)
    assert desktop.supports_cards
    settings = Settings(state_dir=tmp_path / "state", card_interval=0.2, dedup_window=0, console="never")
    with NotificationManager({"desktop": desktop}, settings=settings) as manager:
        model = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.rand(32, 1, generator=torch.Generator().manual_seed(0))
        with RunNotifier(manager, model_name="tiny-linear", epochs=1, chart=False, monitors=False) as run:
            for _ in range(20):
                loss = torch.nn.functional.mse_loss(model(x), 3 * x + 1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                run.step(loss.detach())
                time.sleep(0.05)  # long enough for the card to be shown and edited
            run.epoch({"loss": float(loss)})
        run_id = run.tracker.run_id
        manager.close(timeout=20)
    with Outbox(tmp_path / "state" / "outbox.sqlite3") as outbox:
        card = outbox.card_id(run_id, "desktop")
    assert card is not None and card.isdigit()

    # The card's bubble was closed (dunst keeps what was closed in its history); the end
    # message's bubble is on screen.
    def closed_ids() -> set[int]:
        history = json.loads(_dunstctl(bus, "history") or '{"data": [[]]}')
        return {item["id"]["data"] for item in history["data"][0]}

    wait_for(lambda: int(card) in closed_ids())
    # Left on screen: the start and the end, each once; not a card beside the completion.
    assert _dunstctl(bus, "count", "displayed") == "2"
    assert _dunstctl(bus, "count", "waiting") == "0"
    if shutil.which("import"):
        shot = tmp_path / "desktop-end.png"
        subprocess.run(["import", "-display", display, "-window", "root", str(shot)], check=True, timeout=30)
        if KEEP_SCREENSHOTS:
            shutil.copy(shot, Path(KEEP_SCREENSHOTS) / shot.name)
