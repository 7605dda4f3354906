"""The desktop channel against a real notification server: dunst (Debian's package, with
its default configuration and the installed Adwaita icon theme) on an Xvfb display, on a
real D-Bus session bus, with ``dbus-monitor`` recording what travels on the bus.

A real Lightning training whose ``training_step`` raises reports its failure to it; the
test reads back what dunst did with the bubble (``dunstctl``), what the Notify call
carried (``dbus-monitor``), and takes a screenshot of the display (ImageMagick's
``import``) to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import NotificationManager, Settings
from afs_callbacks.channels.desktop import DesktopNotifier, icon_file
from tests.helpers.hook import wait_until

pytestmark = pytest.mark.slow

TOOLS = {
    "Xvfb": "xvfb",
    "dunst": "dunst",
    "dunstctl": "dunst",
    "dbus-daemon": "dbus",
    "dbus-monitor": "dbus-bin",
    "import": "imagemagick",
}
DUNSTRC = Path("/etc/xdg/dunst/dunstrc")  # Debian's default configuration
#: The background dunst's default configuration gives critical bubbles (#900000).
CRITICAL_BACKGROUND = (0x90, 0x00, 0x00)


def missing_tools() -> list[str]:
    return [f"{tool} (apt: {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]


@dataclass
class Desktop:
    """A display, a session bus, dunst on both, and a monitor of the bus."""

    display: str
    bus: str
    monitor_log: Path
    processes: list[subprocess.Popen[Any]]
    #: When the run's last message was delivered (``time.monotonic()``), once there is a run.
    reported_at: float | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display, "DBUS_SESSION_BUS_ADDRESS": self.bus}

    def dunstctl(self, *args: str) -> str:
        done = subprocess.run(
            ["dunstctl", *args], env=self.env(), capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def history(self) -> list[dict[str, Any]]:
        """The bubbles dunst has closed (expired or dismissed), newest first."""
        [entries] = json.loads(self.dunstctl("history"))["data"]
        return [{key: value["data"] for key, value in entry.items()} for entry in entries]

    def displayed(self) -> int:
        return int(self.dunstctl("count", "displayed").strip())

    def screenshot(self, path: Path) -> Path:
        subprocess.run(
            ["import", "-display", self.display, "-window", "root", str(path)], check=True, timeout=30
        )
        return path


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    absent = missing_tools()
    if absent or not DUNSTRC.is_file():
        pytest.skip("needs " + ", ".join(absent or ["/etc/xdg/dunst/dunstrc (apt: dunst)"]))
    root = tmp_path_factory.mktemp("dunst")
    processes: list[subprocess.Popen[Any]] = []
    try:
        # -displayfd: Xvfb picks a free display and writes its number (no clash with others).
        read, write = os.pipe()
        processes.append(
            subprocess.Popen(
                ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                pass_fds=(write,),
                stderr=subprocess.DEVNULL,
            )
        )
        os.close(write)
        with os.fdopen(read) as numbers:
            display = f":{numbers.readline().strip()}"
        bus_daemon = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes.append(bus_daemon)
        assert bus_daemon.stdout is not None
        bus = bus_daemon.stdout.readline().strip()
        started = Desktop(display, bus, root / "monitor.txt", processes)
        log = started.monitor_log.open("w")
        processes.append(
            subprocess.Popen(
                ["dbus-monitor", "--address", bus, "interface='org.freedesktop.Notifications'"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        processes.append(
            subprocess.Popen(
                ["dunst", "-config", str(DUNSTRC)],
                env=started.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        notifier = DesktopNotifier(bus_address=bus)
        wait_until(lambda: notifier.status().configured, 20, "dunst owning org.freedesktop.Notifications")
        wait_until(lambda: "NameAcquired" in started.monitor_log.read_text(), 10, "dbus-monitor ready")
        yield started
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture(scope="module")
def failed_run(desktop: Desktop, tmp_path_factory: pytest.TempPathFactory) -> Desktop:
    """A real Lightning run that fails in training_step, reported to dunst."""
    from tests.integrations.test_failure_messages import lightning_failure

    root = tmp_path_factory.mktemp("run")
    settings = Settings(state_dir=root / "state", console="never")
    channels = {"desktop": DesktopNotifier(bus_address=desktop.bus)}
    with NotificationManager(channels, settings=settings) as manager:
        lightning_failure(manager, root)
        report = manager.flush(30)
        assert report.pending == 0 and report.dead == 0, report
    desktop.reported_at = time.monotonic()
    return desktop


def notify_calls(log: str) -> list[str]:
    """The Notify method calls dbus-monitor recorded, each as its block of text."""
    blocks = re.split(r"\n(?=(?:method call|method return|signal|error) time=)", log)
    return [block for block in blocks if block.startswith("method call") and "member=Notify" in block]


def test_the_failure_is_a_critical_notify_that_never_expires_with_a_theme_icon(failed_run):
    calls = notify_calls(failed_run.monitor_log.read_text())
    [failure] = [call for call in calls if 'Training failed: resnet"' in call]
    assert re.search(r'string "urgency"\s+variant\s+byte 2', failure)
    assert re.search(r"\]\s+int32 0\s*$", failure), failure  # expire_timeout 0: never expires
    [uri] = re.findall(r'string "image-path"\s+variant\s+string "([^"]+)"', failure)
    assert uri == Path(icon_file("dialog-error") or "").as_uri() and Path(uri[7:]).is_file()
    assert re.search(r'string "dialog-error"', failure)  # the standard name as app_icon


def test_dunst_keeps_the_failure_after_the_ten_second_bubbles_expired(failed_run, tmp_path_factory):
    # The run's start and its live card are normal bubbles with the channel's 10 s; the
    # failure never expires. Whether the start went out on its own or (on a loaded machine,
    # still queued when the run failed) inside the failure's story, once 10 s have passed
    # since the last message the failure must be the one bubble left on screen.
    assert failed_run.reported_at is not None
    wait_until(
        lambda: time.monotonic() - failed_run.reported_at > 11 and failed_run.displayed() == 1,
        40,
        "only the failure left on screen, 10 s after the run's last message",
    )
    history = failed_run.history()
    assert not any("Training failed" in entry["summary"] for entry in history)
    others = [c for c in notify_calls(failed_run.monitor_log.read_text()) if "Training failed" not in c]
    assert bool(others) == bool(history), "a 10 s bubble did not expire (or expired without being sent)"

    shot = failed_run.screenshot(tmp_path_factory.mktemp("shots") / "dunst-failure.png")
    from PIL import Image

    with Image.open(shot) as image:
        data = image.convert("RGB").tobytes()  # getdata() is deprecated in Pillow 13
        pixels = list(zip(data[0::3], data[1::3], data[2::3], strict=True))
    assert pixels.count(CRITICAL_BACKGROUND) > 5000, "no critical bubble on the screen"

    failed_run.dunstctl("close-all")  # the person dismisses it: now it is in the history
    [entry] = [e for e in failed_run.history() if e["summary"].endswith("Training failed: resnet")]
    assert entry["timeout"] == 0
    assert entry["icon_path"] == icon_file("dialog-error")  # dunst found and drew the icon
    first, where = entry["body"].splitlines()[:2]
    assert first.startswith("RuntimeError: CUDA error: device-side assert triggered")
    assert where.startswith("at ") and " in descend (epoch 1, step 2)" in where
    assert len(entry["body"]) <= 500
