"""Desktop channel: a pop-up on the machine the run is on (Linux, macOS, Windows).

Linux (and the BSDs) speak ``org.freedesktop.Notifications.Notify`` on the D-Bus session
bus, through ``jeepney`` (pure Python, the ``desktop`` extra) when it is installed, else
through ``notify-send`` (libnotify). A headless machine has no session bus, or a bus with no
notification server on it; the channel then says so in :meth:`DesktopNotifier.status`, and
a send is a permanent failure that disables it. Nothing raises.

A run's live card is one pop-up updated in place: ``Notify`` returns an id, and passing it
back as ``replaces_id`` replaces that bubble. Only the D-Bus backend gets the id, so only
it keeps cards.

macOS runs ``osascript`` and Windows a PowerShell toast. Run text never becomes part of a
script: it travels as ``osascript`` arguments (read with ``on run argv``) or as base64 in
environment variables that a fixed PowerShell script decodes, so no title can break out.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from afs_callbacks.cards import card_view, render_text
from afs_callbacks.channels._desktop_backends import (
    AppleScriptBackend,
    Backend,
    DBusBackend,
    NotifySendBackend,
    Popup,
    PowerShellBackend,
    Runner,
    jeepney_available,
    run_command,
)
from afs_callbacks.channels.base import ChannelStatus, DeliveryResult, NotificationHandler
from afs_callbacks.events import NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.formatting import context_fields, format_metrics, truncate

if TYPE_CHECKING:
    from afs_callbacks.config import Env, Settings
    from afs_callbacks.events import NotificationEvent
    from afs_callbacks.runstate import RunState

__all__ = ["DesktopNotifier", "Popup", "Runner", "session_bus_address"]

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
        under a new id, which the result carries)."""
        return self._show_card(state, int(message_id) if message_id.isdigit() else 0)

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
        """What to show, independent of the platform."""
        lines = [event.message] if event.message else []
        lines += [f"{label}: {value}" for label, value in context_fields(event) if label != "Host"]
        if event.metrics:
            lines.append(format_metrics(event.metrics))
        return Popup(
            title=truncate(_clean(" ".join(event.title.split())) or event.event_type.value, _TITLE_CHARS),
            body=truncate(_clean("\n".join(lines)), _BODY_CHARS),
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
        if self.backend == "dbus":
            return "backend 'dbus' needs jeepney: pip install 'afs-callbacks[desktop]'"
        return (
            "neither jeepney (pip install 'afs-callbacks[desktop]') nor notify-send "
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
