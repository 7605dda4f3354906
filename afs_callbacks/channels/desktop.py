"""Desktop channel: a pop-up on the machine the run is on (Linux, macOS, Windows).

Linux (and the BSDs) speak ``org.freedesktop.Notifications.Notify`` on the D-Bus session
bus, through ``jeepney`` (pure Python, the ``desktop`` extra) when it is installed, else
through ``notify-send`` (libnotify). A headless machine has no session bus, or a bus with no
notification server on it; the channel then says so in :meth:`DesktopNotifier.status`, and
a send is a permanent failure that disables it. Nothing raises.

A run's live card is one pop-up updated in place: ``Notify`` returns an id, and passing it
back as ``replaces_id`` replaces that bubble. Only the D-Bus backend gets the id, so only
it keeps cards. When the run ends the card's bubble is closed (``CloseNotification``): the
end message is the one bubble left, with its sound and urgency, so the end never leaves
two near-identical pop-ups (docs/channels/desktop.md, "Live run card").

macOS runs ``osascript`` and Windows a PowerShell toast. Run text never becomes part of a
script: it travels as ``osascript`` arguments (read with ``on run argv``) or as base64 in
environment variables that a fixed PowerShell script decodes, so no title can break out.
"""

from __future__ import annotations

import base64
import configparser
import functools
import html
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from afs_callbacks.channels.base import ChannelStatus, DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.channels.card_view import card_view, render_text
from afs_callbacks.events import NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_metrics, shorten, truncate
from afs_callbacks.redaction import redact

if TYPE_CHECKING:
    from afs_callbacks.config import Env, Settings
    from afs_callbacks.events import NotificationEvent
    from afs_callbacks.runstate import RunState

__all__ = ["DesktopNotifier", "Popup", "Runner", "session_bus_address"]

#: Runs ``argv`` with environment ``env`` (None: inherit), giving up after ``timeout`` s.
Runner = Callable[[Sequence[str], Mapping[str, str] | None, float], subprocess.CompletedProcess[str]]

APP_NAME = "afs-callbacks"
_TITLE_CHARS = 120
_BODY_CHARS = 500


class DesktopNotifier(NotificationHandler):
    """Show each event as a desktop notification.

    Args:
        sound: play the level's sound (Linux ``sound-name`` hint, macOS sound, Windows
            toast audio); off asks the server for silence.
        timeout: seconds the pop-up stays (0: until dismissed, where the desktop allows).
        platform: ``sys.platform`` to act for (default: this machine's).
        backend: Linux only: ``auto`` (jeepney if installed, else notify-send), ``dbus``
            or ``notify-send``.
        bus_address: the session bus (default: ``DBUS_SESSION_BUS_ADDRESS``, else
            ``$XDG_RUNTIME_DIR/bus``), read at each use.
        runner: runs a command (macOS, Windows, notify-send); replaceable for tests.
        call_timeout: seconds allowed for the bus or the command to answer.

    Raises:
        ConfigurationError: an unknown ``backend``.

    Example::

        manager.register_handler("desktop", DesktopNotifier(sound=False))
    """

    name: ClassVar[str] = "desktop"
    variables: ClassVar[tuple[str, ...]] = (
        "DESKTOP_NOTIFICATIONS_ENABLED",
        "DESKTOP_NOTIFICATIONS_SOUND",
        "DESKTOP_NOTIFICATIONS_TIMEOUT",
    )
    listing_order: ClassVar[int] = 10
    min_interval: ClassVar[float] = 0.5

    def __init__(
        self,
        *,
        sound: bool = True,
        timeout: float = 10.0,
        platform: str | None = None,
        backend: str = "auto",
        bus_address: str | None = None,
        runner: Runner | None = None,
        call_timeout: float = 10.0,
    ) -> None:
        if backend not in ("auto", "dbus", "notify-send"):
            raise ConfigurationError("backend", f"must be auto, dbus or notify-send, got {backend!r}")
        self.sound = sound
        self.timeout = timeout
        self.platform = platform or sys.platform
        self.backend = backend
        self.bus_address = bus_address
        self.runner = runner or run_command
        self.call_timeout = call_timeout
        # Per instance: a live card needs freedesktop over D-Bus (jeepney), where Notify
        # returns the id that replaces_id updates; the class default (False) covers the rest.
        linux = self.platform not in ("darwin", "win32", "cygwin")
        vars(self)["supports_cards"] = linux and backend in ("auto", "dbus") and jeepney_available()

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Show the pop-up; no desktop session or server is permanent and disables."""
        backend = self._backend()
        if isinstance(backend, str):
            return DeliveryResult.permanent(backend, disable_channel=True)
        return backend.show(self.render(event))

    def post_card(self, state: RunState) -> DeliveryResult:
        """Show the card as a quiet pop-up; its notification id is the card's id."""
        return self._show_card(state, 0)

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """Replace the card's pop-up (a server that let it expire shows it anew, maybe
        under a new id, which the result carries). The final state closes it instead: on a
        desktop the run's end message is the pop-up that tells the end."""
        number = int(message_id) if message_id.isdigit() else 0
        if state.final and number:
            backend = self._backend()
            if isinstance(backend, DBusBackend):
                return backend.close(number)
        return self._show_card(state, number)

    def _show_card(self, state: RunState, replaces_id: int) -> DeliveryResult:
        backend = self._backend()
        if isinstance(backend, str):
            return DeliveryResult.permanent(backend, disable_channel=True)
        if not isinstance(backend, DBusBackend):
            return DeliveryResult.permanent(f"{backend.label} cannot update a pop-up in place")
        _, _, body = render_text(state, limit=_BODY_CHARS).partition("\n")
        popup = Popup(
            title=truncate(_clean(card_view(state).headline), _TITLE_CHARS),
            body=truncate(_clean(body), _BODY_CHARS),
            level=NotificationLevel.INFO,
            sound=False,  # a card changes all the time; the run's start and end sound apart
            timeout=self.timeout,
            app_name=APP_NAME,
        )
        return backend.show(replace(popup, replaces_id=replaces_id))

    def render(self, event: NotificationEvent) -> Popup:
        """What to show, independent of the platform: the message first (a failure's error
        line leads, and only the middle of its frames gives way to the limit), then the
        run's details and metrics in the room left."""
        details = [f"{label}: {value}" for label, value in context_fields(event) if label != "Host"]
        if event.metrics:
            details.append(format_metrics(event.metrics))
        extra = _clean("\n".join(details))
        message = _clean(event.message.strip())
        # The details take at most a third of the bubble while the message needs the room.
        room = _BODY_CHARS - min(len(extra) + 1, _BODY_CHARS // 3) if extra else _BODY_CHARS
        body = shorten(message, room) if message else ""
        if extra and len(body) + 1 < _BODY_CHARS:
            body = (
                f"{body}\n{truncate(extra, _BODY_CHARS - len(body) - 1)}"
                if body
                else truncate(extra, _BODY_CHARS)
            )
        return Popup(
            title=truncate(_clean(" ".join(event.title.split())) or event.event_type.value, _TITLE_CHARS),
            body=body,
            level=event.level,
            sound=self.sound,
            timeout=self.timeout,
            app_name=APP_NAME,
        )

    def status(self) -> ChannelStatus:
        """Usable, or why not: no session bus, no notification server, no tool."""
        backend = self._backend()
        reason = backend if isinstance(backend, str) else backend.probe()
        if reason is not None:
            return ChannelStatus(self.name, False, reason, self.describe())
        return ChannelStatus(self.name, True, destination=self.describe())

    def check(self) -> DeliveryResult:
        """The status as a probe result; no pop-up is shown."""
        status = self.status()
        if status.configured:
            return DeliveryResult.delivered(status.destination)
        return DeliveryResult.permanent(status.reason)

    def describe(self) -> str:
        """The platform and the way pop-ups are shown."""
        backend = self._backend()
        how = f"unusable: {backend}" if isinstance(backend, str) else backend.label
        return f"desktop ({self.platform}, {how})"

    def _backend(self) -> Backend | str:
        """The way to show pop-ups here, or why there is none."""
        if self.platform == "darwin":
            osascript = shutil.which("osascript")
            if osascript is None:
                return "osascript is not on PATH"
            return AppleScriptBackend(osascript, self.runner, self.call_timeout)
        if self.platform in ("win32", "cygwin"):
            # Windows PowerShell 5.1, not pwsh: only it can load the WinRT toast types.
            powershell = shutil.which("powershell")
            if powershell is None:
                return "powershell is not on PATH (Windows PowerShell is needed for toasts)"
            return PowerShellBackend(powershell, self.runner, self.call_timeout)
        address = self.bus_address or session_bus_address(os.environ)
        if address is None:
            return (
                "no desktop session (DBUS_SESSION_BUS_ADDRESS is not set and there is no "
                "$XDG_RUNTIME_DIR/bus)"
            )
        if self.backend in ("auto", "dbus") and jeepney_available():
            return DBusBackend(address, self.call_timeout)
        notify_send = shutil.which("notify-send")
        if self.backend in ("auto", "notify-send") and notify_send:
            return NotifySendBackend(notify_send, address, self.runner, self.call_timeout)
        from afs_callbacks._install import install_hint

        if self.backend == "dbus":
            return f"backend 'dbus' needs jeepney: {install_hint('desktop')}"
        return (
            f"neither jeepney ({install_hint('desktop')}) nor notify-send "
            "(apt install libnotify-bin) is available"
        )

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> DesktopNotifier | None:
        """``DESKTOP_NOTIFICATIONS_ENABLED`` (default true), ``DESKTOP_NOTIFICATIONS_SOUND``
        (default true), ``DESKTOP_NOTIFICATIONS_TIMEOUT`` (seconds, default 10).

        Left at its default, the channel is added only where it can show something, so a
        headless cluster job is not warned about a desktop it never had. Set to true, it
        is always added and its status tells why it cannot show anything.

        Raises:
            ConfigurationError: a value that is not a boolean or a number.
        """
        explicit = env.text("DESKTOP_NOTIFICATIONS_ENABLED") is not None
        if not env.flag("DESKTOP_NOTIFICATIONS_ENABLED", True):
            return None
        notifier = cls(
            sound=env.flag("DESKTOP_NOTIFICATIONS_SOUND", True),
            timeout=env.number("DESKTOP_NOTIFICATIONS_TIMEOUT", 10.0, minimum=0.0, maximum=86400.0) or 0.0,
            bus_address=session_bus_address(env),
        )
        if not explicit and not notifier.status().configured:
            return None
        return notifier


def session_bus_address(environ: Mapping[str, str]) -> str | None:
    """The D-Bus session bus address: ``DBUS_SESSION_BUS_ADDRESS``, else the systemd user
    bus at ``$XDG_RUNTIME_DIR/bus`` (what libdbus falls back to), else None."""
    address = (environ.get("DBUS_SESSION_BUS_ADDRESS") or "").strip()
    if address:
        return address
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        path = os.path.join(runtime, "bus")
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return f"unix:path={path}"
        except OSError:
            pass
    return None


def _clean(text: str) -> str:
    # NUL cannot travel in argv or the environment, nor lone surrogates in UTF-8.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


# Backends: how a pop-up is shown on each platform ------------------------------------------
# Each backend turns a :class:`Popup` into a :class:`DeliveryResult` and can say, without
# showing anything, why it cannot work (:meth:`Backend.probe`). Run text is never spliced
# into a script: it is passed as D-Bus arguments, as ``argv`` entries, or base64-encoded in
# environment variables read by a fixed script.

SERVER_NAME = "org.freedesktop.Notifications"
#: Seconds a status check waits for the bus.
PROBE_TIMEOUT = 2.0
NO_SERVER = f"no notification server on the session bus (nothing owns {SERVER_NAME})"
_CRITICAL = (NotificationLevel.ERROR, NotificationLevel.CRITICAL)
#: freedesktop icon and sound theme names for each level.
ICONS = {
    NotificationLevel.INFO: "dialog-information",
    NotificationLevel.SUCCESS: "dialog-information",
    NotificationLevel.WARNING: "dialog-warning",
    NotificationLevel.ERROR: "dialog-error",
    NotificationLevel.CRITICAL: "dialog-error",
}
#: Themes searched, in order, for the file of a level's icon. The standard names are in
#: each; Adwaita keeps its full-colour ones in ``legacy/`` directories, which dunst's
#: theme lookup (and others) skip, so the file itself travels in the ``image-path`` hint.
ICON_THEMES = ("Adwaita", "breeze", "Papirus", "elementary", "gnome", "Tango", "hicolor")
#: The icon size looked for first (pixels); the nearest other size, else scalable, follows.
ICON_SIZE = 48
SOUNDS = {
    NotificationLevel.INFO: "message-new-instant",
    NotificationLevel.SUCCESS: "complete",
    NotificationLevel.WARNING: "dialog-warning",
    NotificationLevel.ERROR: "dialog-error",
    NotificationLevel.CRITICAL: "dialog-error",
}


@dataclass(frozen=True)
class Popup:
    """What to show, the same on every platform."""

    title: str
    body: str
    level: NotificationLevel
    sound: bool = True
    #: Seconds on screen; 0 means until dismissed.
    timeout: float = 10.0
    app_name: str = "afs-callbacks"
    #: A pop-up to update in place (freedesktop ``replaces_id``; 0: a new one).
    replaces_id: int = 0

    @property
    def urgency(self) -> int:
        """freedesktop urgency: 1 normal, 2 critical (errors stay until dismissed)."""
        return 2 if self.level in _CRITICAL else 1

    @property
    def expire_ms(self) -> int:
        """The timeout in milliseconds, as D-Bus' int32 carries it; 0 (never expires) for
        errors and critical events whatever the timeout: a server honours the client's
        timeout over its own rule for critical urgency, and the bubble of a crash must
        wait for the person."""
        if self.urgency == 2:
            return 0
        return min(int(self.timeout * 1000), 2**31 - 1)


def icon_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where icon themes live (the freedesktop icon theme specification's base
    directories): ``$HOME/.icons``, then ``icons`` under ``$XDG_DATA_HOME`` and each of
    ``$XDG_DATA_DIRS``."""
    environ = os.environ if environ is None else environ
    home = Path(environ.get("HOME") or Path.home())
    data_home = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    data_dirs = [
        Path(d) for d in (environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":") if d
    ]
    return [home / ".icons", data_home / "icons", *(d / "icons" for d in data_dirs)]


@functools.lru_cache(maxsize=64)
def icon_file(name: str, bases: tuple[Path, ...] | None = None) -> str | None:
    """The file of the standard icon ``name`` in an installed theme of :data:`ICON_THEMES`
    (the size nearest :data:`ICON_SIZE`, a bitmap before a vector at the same size), or
    None when no theme carries it. Read from each theme's ``index.theme``. A theme that
    keeps only the symbolic variant (Adwaita from GNOME 46, which dropped ``legacy/``)
    gives ``name-symbolic``: a plain icon is better than none."""
    for variant in (name, f"{name}-symbolic"):
        for theme in ICON_THEMES:
            for base in bases if bases is not None else icon_dirs():
                found = _icon_in_theme(base / theme, variant)
                if found is not None:
                    return found
    return None


def _icon_in_theme(root: Path, name: str) -> str | None:
    index = root / "index.theme"
    if not index.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(index, encoding="utf-8")
        listed = parser.get("Icon Theme", "Directories", fallback="")
        listed += "," + parser.get("Icon Theme", "ScaledDirectories", fallback="")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    ranked = []
    for directory in dict.fromkeys(d.strip() for d in listed.split(",") if d.strip()):
        try:
            size = parser.getint(directory, "Size", fallback=0)
        except ValueError:
            size = 0
        scalable = parser.get(directory, "Type", fallback="") == "Scalable"
        ranked.append((scalable, abs(size - ICON_SIZE), directory))
    for _, _, directory in sorted(ranked):
        for extension in (".png", ".svg"):
            path = root / directory / f"{name}{extension}"
            if path.is_file():
                return str(path)
    return None


def _icon_hint(level: NotificationLevel) -> str | None:
    """The level's icon file as a ``file://`` URI, for the ``image-path`` hint."""
    found = icon_file(ICONS[level])
    return Path(found).as_uri() if found else None


class Backend(Protocol):
    """One way of showing pop-ups."""

    label: str

    def show(self, popup: Popup) -> DeliveryResult:
        """Show ``popup``; never raises."""

    def probe(self) -> str | None:
        """None when pop-ups can be shown, else the reason they cannot."""


def jeepney_available() -> bool:
    """Whether the optional ``jeepney`` package is installed (without importing it)."""
    return importlib.util.find_spec("jeepney") is not None


class DBusBackend:
    """``org.freedesktop.Notifications`` on the session bus, spoken with jeepney.

    A connection is opened per pop-up: pop-ups are rare, and a connection kept open would
    go stale when the desktop session restarts (or be shared across a fork).
    """

    label = "D-Bus"

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    def probe(self) -> str | None:
        """Is the notification name owned, or can the bus start its owner on demand?"""
        from jeepney.bus_messages import message_bus

        # Short: status() runs when the channel is registered, on the training thread.
        timeout = min(self.timeout, PROBE_TIMEOUT)
        try:
            connection = self._connect(timeout)
        except Exception as error:
            return f"no desktop session: cannot connect to the session bus ({_text(error)})"
        try:
            with connection:
                if self._call(connection, message_bus, "NameHasOwner", "s", (SERVER_NAME,), timeout)[0]:
                    return None
                if (
                    SERVER_NAME
                    in self._call(connection, message_bus, "ListActivatableNames", timeout=timeout)[0]
                ):
                    return None
        except Exception as error:
            return f"the session bus did not answer ({_text(error)})"
        return NO_SERVER

    def show(self, popup: Popup) -> DeliveryResult:
        """Call ``Notify``; escape the body where the server reads it as markup."""
        from jeepney import DBusAddress, DBusErrorResponse

        server = DBusAddress("/org/freedesktop/Notifications", SERVER_NAME, SERVER_NAME)
        try:
            connection = self._connect(self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            return DeliveryResult.permanent(f"no desktop session: {_text(error)}", disable_channel=True)
        except Exception as error:
            return DeliveryResult.retry(f"cannot connect to the session bus: {_text(error)}")
        hints: dict[str, tuple[str, Any]] = {"urgency": ("y", popup.urgency)}
        image = _icon_hint(popup.level)
        if image is not None:
            hints["image-path"] = ("s", image)
        if popup.sound:
            hints["sound-name"] = ("s", SOUNDS[popup.level])
        else:
            hints["suppress-sound"] = ("b", True)
        try:
            with connection:
                capabilities = self._call(connection, server, "GetCapabilities", timeout=self.timeout)[0]
                # Servers with body-markup read "<" and "&" as markup: "loss < 1" would vanish.
                body = html.escape(popup.body, quote=False) if "body-markup" in capabilities else popup.body
                args: tuple[Any, ...] = (
                    popup.app_name,
                    popup.replaces_id,
                    ICONS[popup.level],
                    popup.title,
                    body,
                    [],
                    hints,
                    popup.expire_ms,
                )
                (number,) = self._call(connection, server, "Notify", "susssasa{sv}i", args, self.timeout)
        except DBusErrorResponse as error:
            if error.name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
            ):
                return DeliveryResult.permanent(NO_SERVER, disable_channel=True)
            if error.name in ("org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Timeout"):
                return DeliveryResult.retry(f"notification server busy: {error.name}")
            return DeliveryResult.permanent(f"notification server refused: {_text(error)}")
        except (TimeoutError, OSError) as error:
            return DeliveryResult.retry(f"notification server did not answer: {_text(error)}")
        # The id lets a live card replace this very pop-up later.
        return DeliveryResult(Outcome.DELIVERED, f"notification {number}", message_id=str(number))

    def close(self, number: int) -> DeliveryResult:
        """Call ``CloseNotification``: the pop-up ``number`` goes (one already gone is no
        error: the spec closes nothing then)."""
        from jeepney import DBusAddress, DBusErrorResponse

        server = DBusAddress("/org/freedesktop/Notifications", SERVER_NAME, SERVER_NAME)
        try:
            with self._connect(self.timeout) as connection:
                self._call(connection, server, "CloseNotification", "u", (number,), self.timeout)
        except DBusErrorResponse as error:
            return DeliveryResult.permanent(f"notification server refused: {_text(error)}")
        except (TimeoutError, OSError) as error:
            return DeliveryResult.retry(f"notification server did not answer: {_text(error)}")
        return DeliveryResult(Outcome.DELIVERED, f"notification {number} closed", message_id=str(number))

    def _connect(self, timeout: float) -> Any:
        from jeepney.io.blocking import open_dbus_connection

        return open_dbus_connection(bus=self.address, auth_timeout=timeout)

    def _call(
        self,
        connection: Any,
        address: Any,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
        timeout: float = 10.0,
    ) -> tuple[Any, ...]:
        from jeepney import new_method_call
        from jeepney.wrappers import unwrap_msg

        reply = connection.send_and_get_reply(
            new_method_call(address, method, signature, body), timeout=timeout
        )
        return tuple(unwrap_msg(reply))


class _CommandBackend:
    """A backend that runs one command per pop-up."""

    label = "command"

    def __init__(self, executable: str, runner: Runner, timeout: float) -> None:
        self.executable = executable
        self.runner = runner
        self.timeout = timeout

    def argv(self, popup: Popup) -> list[str]:
        """The command line."""
        raise NotImplementedError

    def environment(self, popup: Popup) -> dict[str, str] | None:
        """The command's environment (None: this process's)."""
        return None

    def failure(self, returncode: int, stderr: str) -> DeliveryResult:
        """What a non-zero exit means; by default the message cannot be shown."""
        return DeliveryResult.permanent(f"{self.label} exited with {returncode}: {stderr}")

    def probe(self) -> str | None:
        """The executable was found: assume it works until a pop-up says otherwise."""
        return None

    def show(self, popup: Popup) -> DeliveryResult:
        """Run the command; a timeout is retried, a missing command disables the channel."""
        try:
            done = self.runner(self.argv(popup), self.environment(popup), self.timeout)
        except subprocess.TimeoutExpired:
            return DeliveryResult.retry(f"{self.label} did not finish within {self.timeout:g} s")
        except OSError as error:
            return DeliveryResult.permanent(f"cannot run {self.label}: {_text(error)}", disable_channel=True)
        if done.returncode != 0:
            return self.failure(done.returncode, _text(done.stderr or done.stdout or ""))
        return DeliveryResult.delivered(self.label)


class NotifySendBackend(_CommandBackend):
    """``notify-send`` (libnotify), for Linux machines without jeepney."""

    label = "notify-send"

    def __init__(self, executable: str, address: str, runner: Runner, timeout: float) -> None:
        super().__init__(executable, runner, timeout)
        self.address = address

    def argv(self, popup: Popup) -> list[str]:
        """Options, then ``--`` so that a title starting with ``-`` is not read as one."""
        hint = f"string:sound-name:{SOUNDS[popup.level]}" if popup.sound else "boolean:suppress-sound:true"
        return [
            self.executable,
            f"--app-name={popup.app_name}",
            f"--urgency={'critical' if popup.urgency == 2 else 'normal'}",
            f"--expire-time={popup.expire_ms}",
            f"--icon={icon_file(ICONS[popup.level]) or ICONS[popup.level]}",
            f"--hint={hint}",
            "--",
            popup.title,
            # notify-send cannot ask for capabilities; the common servers all read markup.
            html.escape(popup.body, quote=False),
        ]

    def environment(self, popup: Popup) -> dict[str, str]:
        """This process's environment with the bus address found."""
        return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address}

    def failure(self, returncode: int, stderr: str) -> DeliveryResult:
        """No server or no bus disables the channel; other errors lose this pop-up only."""
        if "ServiceUnknown" in stderr or "not provided by any .service" in stderr:
            return DeliveryResult.permanent(NO_SERVER, disable_channel=True)
        if "connect" in stderr.lower() or "autolaunch" in stderr.lower():
            return DeliveryResult.permanent(f"no desktop session: {stderr}", disable_channel=True)
        return super().failure(returncode, stderr)


class AppleScriptBackend(_CommandBackend):
    """macOS: ``display notification`` through ``osascript``, text passed as arguments."""

    label = "osascript"
    #: System sounds (/System/Library/Sounds) per level.
    SOUNDS: ClassVar[dict[NotificationLevel, str]] = {
        level: "Basso" if level in _CRITICAL else "Glass" for level in NotificationLevel
    }

    def argv(self, popup: Popup) -> list[str]:
        """A fixed script reading ``argv``; the leading ``afs-callbacks`` argument ends
        option parsing, so a title starting with ``-`` stays text."""
        sound = f' sound name "{self.SOUNDS[popup.level]}"' if popup.sound else ""
        statement = (
            "display notification (item 3 of argv) with title (item 2 of argv)"
            f" subtitle (item 4 of argv){sound}"
        )
        return [
            self.executable,
            "-e",
            "on run argv",
            "-e",
            statement,
            "-e",
            "end run",
            popup.app_name,
            popup.title,
            popup.body or popup.title,
            popup.level.value.upper(),
        ]


#: The toast script; run text arrives base64-encoded in AFS_DESKTOP_* variables.
TOAST_SCRIPT = r"""
$ErrorActionPreference = 'Stop'
function Read-Text($name) {
  [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String([Environment]::GetEnvironmentVariable($name)))
}
$null = [Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications,
  ContentType = WindowsRuntime]
$null = [Windows.Data.Xml.Dom.XmlDocument, Windows.Data.Xml.Dom.XmlDocument, ContentType = WindowsRuntime]
$xml = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent(
  [Windows.UI.Notifications.ToastTemplateType]::ToastText02)
$texts = $xml.GetElementsByTagName('text')
$null = $texts.Item(0).AppendChild($xml.CreateTextNode((Read-Text 'AFS_DESKTOP_TITLE')))
$null = $texts.Item(1).AppendChild($xml.CreateTextNode((Read-Text 'AFS_DESKTOP_BODY')))
if ($env:AFS_DESKTOP_SILENT -eq '1') {
  $audio = $xml.CreateElement('audio'); $audio.SetAttribute('silent', 'true')
  $null = $xml.DocumentElement.AppendChild($audio)
}
if ($env:AFS_DESKTOP_LONG -eq '1') { $xml.DocumentElement.SetAttribute('duration', 'long') }
$toast = [Windows.UI.Notifications.ToastNotification]::new($xml)
$app = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\WindowsPowerShell\v1.0\powershell.exe'
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($app).Show($toast)
""".strip()


class PowerShellBackend(_CommandBackend):
    """Windows: a toast from Windows PowerShell (no BurntToast module needed)."""

    label = "PowerShell toast"

    def argv(self, popup: Popup) -> list[str]:
        """The fixed script as ``-EncodedCommand`` (UTF-16LE base64): no quoting at all."""
        encoded = base64.b64encode(TOAST_SCRIPT.encode("utf-16-le")).decode("ascii")
        return [
            self.executable,
            "-NoProfile",
            "-NonInteractive",
            "-ExecutionPolicy",
            "Bypass",
            "-EncodedCommand",
            encoded,
        ]

    def environment(self, popup: Popup) -> dict[str, str]:
        """The run text, base64-encoded UTF-8, in variables the script decodes."""
        long_toast = popup.level in _CRITICAL or popup.timeout == 0 or popup.timeout > 10
        return {
            **os.environ,
            "AFS_DESKTOP_TITLE": _b64(popup.title),
            "AFS_DESKTOP_BODY": _b64(popup.body),
            "AFS_DESKTOP_SILENT": "0" if popup.sound else "1",
            "AFS_DESKTOP_LONG": "1" if long_toast else "0",
        }


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` without a shell or a console window, capturing its output."""
    return subprocess.run(
        list(argv),
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        # Windows would flash a console window for every toast without this.
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")


def _text(error: object) -> str:
    text = " ".join(redact(error).split())
    return truncate(text or type(error).__name__, 300)
