"""Desktop channel. Linux runs for real: a private dbus-daemon session bus, a small
notification server (tests/channels/desktop_dbus_server.py) that owns
org.freedesktop.Notifications and records each Notify call, and both ways of reaching it
(jeepney and notify-send). macOS and Windows cannot run here: their command lines are
checked with a stub runner (and stand-in executables on PATH), never executed.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.desktop import TOAST_SCRIPT, DesktopNotifier, icon_file, session_bus_address
from afs_callbacks.config import Env, Settings
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (apt: dbus)")

SERVER = Path(__file__).with_name("desktop_dbus_server.py")
NASTY = 'say "hi" \\ end tell\n-- do shell script "touch /tmp/pwned" $(id) `id` \' & | ; <b>x</b> 日本語 🚀'
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
  {service_dir}
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def read_line(stream: IO[str], timeout: float = 10.0) -> str:
    """The next line a child process prints, waiting at most ``timeout`` seconds for it."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    return stream.readline().strip()


@dataclass
class Bus:
    """A private session bus and, optionally, the notification server on it."""

    address: str
    record: Path
    processes: list[subprocess.Popen[str]]

    def start_server(self, capabilities: str = "body,body-markup") -> None:
        server = subprocess.Popen(
            [sys.executable, str(SERVER), str(self.record), capabilities, self.address],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(server)
        assert server.stdout is not None and read_line(server.stdout) == "ready"

    def calls(self) -> list[dict[str, Any]]:
        """Notify calls the server has answered, oldest first."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text(encoding="utf-8").splitlines()]


def start_bus(tmp_path: Path, listen: str = "unix:tmpdir=/tmp", activatable: bool = False) -> Bus:
    record = tmp_path / "notify.jsonl"
    service_dir = ""
    if activatable:
        services = tmp_path / "services"
        services.mkdir()
        (services / "org.freedesktop.Notifications.service").write_text(
            "[D-BUS Service]\nName=org.freedesktop.Notifications\n"
            f"Exec={sys.executable} {SERVER} {record} body-markup\n"
        )
        service_dir = f"<servicedir>{services}</servicedir>"
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(listen=listen, service_dir=service_dir))
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.stdout is not None
    return Bus(read_line(daemon.stdout), record, [daemon])


def stop(bus: Bus) -> None:
    for process in reversed(bus.processes):
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    """A session bus with nobody owning org.freedesktop.Notifications."""
    started = start_bus(tmp_path)
    yield started
    stop(started)


@pytest.fixture
def desktop(bus: Bus) -> Bus:
    """A session bus with the recording notification server on it."""
    bus.start_server()
    return bus


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotificationManager]:
    settings = Settings(state_dir=tmp_path / "state", dedup_window=0, console="never")
    manager = NotificationManager(settings=settings)
    yield manager
    manager.close(timeout=1)


@pytest.fixture
def no_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A headless machine: no bus address, and no systemd user bus socket."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def image_hint(name: str) -> dict[str, str]:
    """The ``image-path`` hint a pop-up carries where the installed theme has ``name``."""
    found = icon_file(name)
    return {"image-path": Path(found).as_uri()} if found else {}


def failed(title: str = "Training failed", message: str = "loss < 1 & acc > 0.5") -> NotificationEvent:
    return NotificationEvent(
        EventType.TRAINING_FAILED,
        NotificationLevel.ERROR,
        title,
        message,
        {"model": "bert-tiny", "run_id": "r1", "step": 120, "metrics": {"loss": 0.25}},
    )


# Linux, for real --------------------------------------------------------------------------


def test_notify_over_dbus_through_the_manager(manager: NotificationManager, desktop: Bus) -> None:
    notifier = DesktopNotifier(bus_address=desktop.address, backend="dbus")
    manager.register_handler("desktop", notifier)
    manager.emit(failed('NaN "loss" <at> step 120'))
    assert manager.flush(10).delivered == 1

    [call] = desktop.calls()
    assert call["app_name"] == "afs-callbacks"
    assert call["summary"] == 'NaN "loss" <at> step 120'
    # The server reads markup (body-markup): the run's text is escaped, not interpreted.
    assert call["body"].startswith("loss &lt; 1 &amp; acc &gt; 0.5\nModel: bert-tiny")
    assert "loss=0.25" in call["body"]
    assert call["hints"] == {"urgency": 2, "sound-name": "dialog-error", **image_hint("dialog-error")}
    assert call["hint_types"]["urgency"] == "y" and call["hint_types"]["sound-name"] == "s"
    # An error waits for the person: never expires, whatever the channel's timeout (10 s).
    assert call["icon"] == "dialog-error" and call["expire_timeout"] == 0
    assert notifier.status().configured


def test_plain_body_for_servers_without_markup_and_no_sound(bus: Bus) -> None:
    bus.start_server(capabilities="body")
    notifier = DesktopNotifier(bus_address=bus.address, backend="dbus", sound=False, timeout=0)
    event = NotificationEvent(EventType.TRAINING_STARTED, NotificationLevel.INFO, "Started", "a < b & c")
    assert notifier.send(event).ok
    [call] = bus.calls()
    assert call["body"] == "a < b & c"
    assert call["hints"] == {"urgency": 1, "suppress-sound": True, **image_hint("dialog-information")}
    assert call["expire_timeout"] == 0 and call["icon"] == "dialog-information"


@pytest.mark.skipif(shutil.which("notify-send") is None, reason="needs notify-send (apt: libnotify-bin)")
def test_notify_send_fallback(desktop: Bus) -> None:
    notifier = DesktopNotifier(bus_address=desktop.address, backend="notify-send")
    result = notifier.send(failed(title="-e looks like an option"))
    assert result.ok, result.detail
    [call] = desktop.calls()
    assert call["app_name"] == "afs-callbacks"
    assert call["summary"] == "-e looks like an option"
    assert call["body"].startswith("loss &lt; 1 &amp; acc &gt; 0.5")
    assert call["hints"]["urgency"] == 2 and call["hints"]["sound-name"] == "dialog-error"
    assert call["expire_timeout"] == 0
    assert call["icon"] == (icon_file("dialog-error") or "dialog-error")
    assert "notify-send" in notifier.describe()


@pytest.mark.parametrize("backend", ["dbus", "notify-send"])
def test_bus_without_notification_server(bus: Bus, backend: str, manager: NotificationManager) -> None:
    if backend == "notify-send" and shutil.which("notify-send") is None:
        pytest.skip("needs notify-send")
    notifier = DesktopNotifier(bus_address=bus.address, backend=backend)
    result = notifier.send(failed())
    assert result.outcome is Outcome.PERMANENT and result.disable_channel
    assert "no notification server" in result.detail
    if backend == "dbus":
        status = notifier.status()
        assert not status.configured and "nothing owns org.freedesktop.Notifications" in status.reason
        manager.register_handler("desktop", notifier)
        [shown] = manager.status()
        assert not shown.configured and "no notification server" in shown.reason


def test_a_server_that_never_answers_is_retried_not_waited_for(bus: Bus) -> None:
    bus.start_server(capabilities="mute")
    result = DesktopNotifier(bus_address=bus.address, backend="dbus", call_timeout=0.3).send(failed())
    assert result.outcome is Outcome.RETRY and "did not answer" in result.detail


def test_server_started_on_demand_counts_as_present(tmp_path: Path) -> None:
    bus = start_bus(tmp_path, activatable=True)
    try:
        notifier = DesktopNotifier(bus_address=bus.address, backend="dbus")
        assert notifier.status().configured  # activatable, not running yet
        assert bus.calls() == []
        assert notifier.send(failed()).ok  # the bus starts the server for this call
        assert [call["summary"] for call in bus.calls()] == ["Training failed"]
    finally:
        stop(bus)


def test_systemd_user_bus_found_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    bus = start_bus(tmp_path, listen=f"unix:path={runtime}/bus")
    try:
        bus.start_server()
        monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        assert session_bus_address(os.environ) == f"unix:path={runtime}/bus"
        assert DesktopNotifier(backend="dbus").send(failed()).ok
    finally:
        stop(bus)
    assert len(bus.calls()) == 1


@pytest.mark.usefixtures("no_session")
def test_no_session_bus(tmp_path: Path) -> None:
    for backend in ("dbus", "notify-send"):
        notifier = DesktopNotifier(backend=backend)
        status = notifier.status()
        assert not status.configured and status.reason.startswith("no desktop session")
        result = notifier.send(failed())
        assert result.outcome is Outcome.PERMANENT and result.disable_channel
    gone = DesktopNotifier(bus_address=f"unix:path={tmp_path}/no-such-socket", backend="dbus")
    assert not gone.status().configured and "cannot connect" in gone.status().reason
    assert gone.send(failed()).disable_channel


@pytest.mark.usefixtures("no_session")
def test_from_env(desktop: Bus) -> None:
    def build(**variables: str) -> DesktopNotifier | None:
        return DesktopNotifier.from_env(Env(variables, env_file=False))

    # Left at its default, a headless machine gets no desktop channel (and no warning).
    assert build() is None
    assert build(DESKTOP_NOTIFICATIONS_ENABLED="false", DBUS_SESSION_BUS_ADDRESS=desktop.address) is None
    explicit = build(DESKTOP_NOTIFICATIONS_ENABLED="true")
    assert explicit is not None and explicit.status().reason.startswith("no desktop session")

    found = build(
        DBUS_SESSION_BUS_ADDRESS=desktop.address,
        DESKTOP_NOTIFICATIONS_SOUND="off",
        DESKTOP_NOTIFICATIONS_TIMEOUT="0",
    )
    assert found is not None and found.status().configured
    assert (found.sound, found.timeout, found.bus_address) == (False, 0.0, desktop.address)

    for variable, value in [
        ("DESKTOP_NOTIFICATIONS_ENABLED", "maybe"),
        ("DESKTOP_NOTIFICATIONS_SOUND", "loud"),
        ("DESKTOP_NOTIFICATIONS_TIMEOUT", "-1"),
    ]:
        with pytest.raises(ConfigurationError) as raised:
            build(**{variable: value, "DBUS_SESSION_BUS_ADDRESS": desktop.address})
        assert raised.value.variable == variable


@pytest.mark.usefixtures("no_session")
def test_manager_from_env_reports_why_desktop_cannot_work(tmp_path: Path) -> None:
    manager = NotificationManager.from_env(
        Env({"DESKTOP_NOTIFICATIONS_ENABLED": "1", "AFS_STATE_DIR": str(tmp_path / "s")}, env_file=False),
        channels=["desktop"],
    )
    try:
        [status] = manager.status()
        assert status.name == "desktop" and not status.configured
        assert "DBUS_SESSION_BUS_ADDRESS" in status.reason
    finally:
        manager.close(timeout=1)


# macOS and Windows: command lines only ------------------------------------------------------


class StubRunner:
    """Records the commands it is given instead of running them."""

    def __init__(self, returncode: int = 0, stderr: str = "", raises: BaseException | None = None) -> None:
        self.calls: list[tuple[list[str], dict[str, str], float]] = []
        self.returncode, self.stderr, self.raises = returncode, stderr, raises

    def __call__(
        self, argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), dict(env or {}), timeout))
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(list(argv), self.returncode, "", self.stderr)


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in ``osascript`` and ``powershell`` on PATH, found by shutil.which, never run."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("osascript", "powershell"):
        (tools / name).write_text("#!/bin/sh\nexit 99\n")
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    return tools


def test_macos_passes_text_as_arguments(fake_tools: Path) -> None:
    """The script is fixed; the title and body arrive as ``argv`` items of ``on run``."""
    runner = StubRunner()
    notifier = DesktopNotifier(platform="darwin", runner=runner)
    assert notifier.send(failed(title="-e " + NASTY, message=NASTY)).ok

    [(argv, _, _)] = runner.calls
    title = "-e " + " ".join(NASTY.split())
    script = argv[1:7]
    assert argv[0] == str(fake_tools / "osascript")
    assert script == [
        "-e",
        "on run argv",
        "-e",
        "display notification (item 3 of argv) with title (item 2 of argv)"
        ' subtitle (item 4 of argv) sound name "Basso"',
        "-e",
        "end run",
    ]
    # Text comes after a fixed first argument, so "-e ..." cannot be read as an option.
    assert argv[7] == "afs-callbacks" and argv[8] == title and argv[10] == "ERROR"
    assert argv[9].startswith(NASTY + "\nModel: bert-tiny")

    quiet = StubRunner()
    DesktopNotifier(platform="darwin", runner=quiet, sound=False).send(failed())
    assert "sound name" not in quiet.calls[0][0][4]


def test_windows_toast_text_travels_base64_encoded(fake_tools: Path) -> None:
    """The script is fixed and -EncodedCommand; the text is in base64 environment variables."""
    runner = StubRunner()
    assert DesktopNotifier(platform="win32", runner=runner).send(failed(title=NASTY, message=NASTY)).ok

    [(argv, env, _)] = runner.calls
    assert argv[:-1] == [
        str(fake_tools / "powershell"),
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
    ]
    assert base64.b64decode(argv[-1]).decode("utf-16-le") == TOAST_SCRIPT

    def decoded(name: str) -> str:
        return base64.b64decode(env[name]).decode("utf-8")

    assert decoded("AFS_DESKTOP_TITLE") == " ".join(NASTY.split())
    assert decoded("AFS_DESKTOP_BODY").startswith(NASTY + "\nModel: bert-tiny")
    assert (env["AFS_DESKTOP_SILENT"], env["AFS_DESKTOP_LONG"]) == ("0", "1")
    assert "PATH" in env  # the rest of the environment is kept

    quiet = StubRunner()
    info = NotificationEvent(EventType.TRAINING_STARTED, NotificationLevel.INFO, "Started")
    DesktopNotifier(platform="win32", runner=quiet, sound=False).send(info)
    assert (quiet.calls[0][1]["AFS_DESKTOP_SILENT"], quiet.calls[0][1]["AFS_DESKTOP_LONG"]) == ("1", "0")


@pytest.mark.parametrize(
    ("runner", "outcome", "disables", "words"),
    [
        (
            StubRunner(1, "execution error: Not authorized to send Apple events (-1743)"),
            Outcome.PERMANENT,
            False,
            "-1743",
        ),
        (
            StubRunner(raises=subprocess.TimeoutExpired("osascript", 10)),
            Outcome.RETRY,
            False,
            "did not finish",
        ),
        (StubRunner(raises=FileNotFoundError(2, "No such file")), Outcome.PERMANENT, True, "cannot run"),
    ],
)
def test_command_failures(
    fake_tools: Path, runner: StubRunner, outcome: Outcome, disables: bool, words: str
) -> None:
    result = DesktopNotifier(platform="darwin", runner=runner).send(failed())
    assert (result.outcome, result.disable_channel) == (outcome, disables)
    assert words in result.detail


def test_missing_tools_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for platform, words in (("darwin", "osascript is not on PATH"), ("win32", "powershell is not on PATH")):
        notifier = DesktopNotifier(platform=platform, runner=StubRunner())
        assert not notifier.status().configured and words in notifier.status().reason
        result = notifier.send(failed())
        assert result.outcome is Outcome.PERMANENT and result.disable_channel


def test_unknown_backend_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="dbus-python"):
        DesktopNotifier(backend="dbus-python")


def _theme(root: Path, directories: dict[str, str], files: list[str]) -> None:
    """An icon theme as the freedesktop spec lays it out: index.theme and its folders."""
    sections = "".join(
        f"\n[{folder}]\nSize={size}\nType={'Scalable' if size == '0' else 'Fixed'}\n"
        for folder, size in directories.items()
    )
    root.mkdir(parents=True)
    (root / "index.theme").write_text(
        f"[Icon Theme]\nName=T\nDirectories={','.join(directories)}\n{sections}"
    )
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"icon")


def test_icon_file_takes_the_nearest_size_and_a_symbolic_one_where_the_theme_has_only_that(
    tmp_path: Path,
) -> None:
    """Adwaita up to GNOME 45 keeps the full-colour names under ``legacy/`` (found from its
    index.theme); from GNOME 46 only ``-symbolic`` ones exist: either gives an icon."""
    old, new = tmp_path / "old", tmp_path / "new"
    _theme(
        old / "Adwaita",
        {"16x16/legacy": "16", "48x48/legacy": "48", "scalable/status": "0"},
        [
            "16x16/legacy/dialog-error.png",
            "48x48/legacy/dialog-error.png",
            "scalable/status/dialog-error-symbolic.svg",
        ],
    )
    _theme(new / "Adwaita", {"scalable/status": "0"}, ["scalable/status/dialog-error-symbolic.svg"])
    assert icon_file("dialog-error", (old,)) == str(old / "Adwaita/48x48/legacy/dialog-error.png")
    assert icon_file("dialog-error", (new,)) == str(new / "Adwaita/scalable/status/dialog-error-symbolic.svg")
    assert icon_file("dialog-error", (tmp_path / "none",)) is None
