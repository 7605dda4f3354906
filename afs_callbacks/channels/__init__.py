"""Channels: one module per service, each a :class:`NotificationHandler`, declared once here.

Modules are imported only when a channel is used, so ``import afs_callbacks`` stays cheap
and a channel's optional dependency is needed only by those who use it.

:data:`REGISTRY` is the one place a channel is declared. Everything else that has to know
the channels derives from it: the package's lazy exports, the manager's routing variables
(``<PREFIX>_MIN_LEVEL``, ``<PREFIX>_EVENTS``) and default level, ``afs-notify status``'s
"did you mean" for misspelt variables, the tests' clean environment and the check that
``.env.example`` documents every variable. Adding a channel is its module, one entry here,
a test and a doc page.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from afs_callbacks.channels.base import (
    ChannelStatus,
    DeliveryResult,
    NotificationHandler,
    Outcome,
)

if TYPE_CHECKING:
    from afs_callbacks.config import Env, Settings


@dataclass(frozen=True)
class ChannelSpec:
    """How a channel is found, configured and routed.

    Attributes:
        name: the channel's name in routing, history and CLI output.
        target: ``"module:Class"`` of its handler.
        prefix: the routing variables' prefix: ``<PREFIX>_MIN_LEVEL``, ``<PREFIX>_EVENTS``,
            ``<PREFIX>_CARD``.
        variables: every environment variable its ``from_env`` reads (routing ones aside).
        min_level: the default of ``<PREFIX>_MIN_LEVEL`` (SMS costs money: ``error``).
    """

    name: str
    target: str
    prefix: str
    variables: tuple[str, ...] = ()
    min_level: str = "info"

    @property
    def module(self) -> str:
        """The module that defines the handler."""
        return self.target.partition(":")[0]

    @property
    def class_name(self) -> str:
        """The handler's class name (also its public name in ``afs_callbacks``)."""
        return self.target.partition(":")[2]

    @property
    def routing_variables(self) -> tuple[str, ...]:
        """The routing variables every channel has."""
        return (f"{self.prefix}_MIN_LEVEL", f"{self.prefix}_EVENTS", f"{self.prefix}_CARD")


_BASE = "afs_callbacks.channels"

#: Every channel, in the order ``afs-notify status`` lists them and users meet them.
REGISTRY: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec(
            "desktop",
            f"{_BASE}.desktop:DesktopNotifier",
            "DESKTOP",
            ("DESKTOP_NOTIFICATIONS_ENABLED", "DESKTOP_NOTIFICATIONS_SOUND", "DESKTOP_NOTIFICATIONS_TIMEOUT"),
        ),
        ChannelSpec(
            "email",
            f"{_BASE}.email:EmailNotifier",
            "EMAIL",
            (
                "SMTP_HOST",
                "TO_EMAILS",
                "SMTP_USER",
                "SMTP_PASSWORD",
                "FROM_EMAIL",
                "SMTP_SECURITY",
                "SMTP_PORT",
                "SMTP_CA_FILE",
            ),
        ),
        ChannelSpec(
            "slack",
            f"{_BASE}.slack:SlackNotifier",
            "SLACK",
            ("SLACK_WEBHOOK_URL", "SLACK_CHANNEL", "SLACK_BOT_TOKEN", "SLACK_API_URL"),
        ),
        ChannelSpec("discord", f"{_BASE}.discord:DiscordNotifier", "DISCORD", ("DISCORD_WEBHOOK_URL",)),
        ChannelSpec(
            "webhook",
            f"{_BASE}.webhook:WebhookNotifier",
            "WEBHOOK",
            ("WEBHOOK_URL", "WEBHOOK_SECRET", "WEBHOOK_HEADERS", "WEBHOOK_INCLUDE_ATTACHMENTS"),
        ),
        ChannelSpec(
            "telegram",
            f"{_BASE}.telegram:TelegramNotifier",
            "TELEGRAM",
            ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_URL"),
        ),
        ChannelSpec("teams", f"{_BASE}.teams:TeamsNotifier", "TEAMS", ("TEAMS_WEBHOOK_URL",)),
        ChannelSpec(
            "ntfy",
            f"{_BASE}.ntfy:NtfyNotifier",
            "NTFY",
            ("NTFY_TOPIC", "NTFY_URL", "NTFY_TOKEN", "NTFY_LIVE"),
        ),
        ChannelSpec(
            "sms",
            f"{_BASE}.sms:SmsNotifier",
            "SMS",
            (
                "TWILIO_ACCOUNT_SID",
                "TWILIO_AUTH_TOKEN",
                "TWILIO_FROM_NUMBER",
                "SMS_TO_NUMBERS",
                "TWILIO_API_URL",
            ),
            min_level="error",
        ),
        ChannelSpec(
            "pagerduty",
            f"{_BASE}.pagerduty:PagerDutyNotifier",
            "PAGERDUTY",
            ("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_API_URL", "PAGERDUTY_SOURCE"),
        ),
        ChannelSpec(
            "alertmanager",
            f"{_BASE}.alertmanager:AlertmanagerNotifier",
            "ALERTMANAGER",
            (
                "ALERTMANAGER_URL",
                "ALERTMANAGER_LABELS",
                "ALERTMANAGER_ALERT_LEVEL",
                "ALERTMANAGER_RESEND_INTERVAL",
                "ALERTMANAGER_RESOLVE_TIMEOUT",
                "ALERTMANAGER_FAILED_TTL",
                "ALERTMANAGER_GENERATOR_URL",
            ),
        ),
        ChannelSpec("apprise", f"{_BASE}.apprise:AppriseNotifier", "APPRISE", ("APPRISE_URLS",)),
        ChannelSpec("console", f"{_BASE}.console:ConsoleNotifier", "CONSOLE"),
    )
}

#: Channel name -> "module:Class" (derived from :data:`REGISTRY`; kept for callers of old).
CHANNELS: dict[str, str] = {name: spec.target for name, spec in REGISTRY.items()}


def load_channel_class(name: str) -> type[NotificationHandler]:
    """Import and return the handler class registered under ``name``.

    Raises:
        KeyError: no channel has that name.
        ImportError: the channel's module is not available.
    """
    spec = REGISTRY[name]
    module = importlib.import_module(spec.module)
    handler_class: type[NotificationHandler] = getattr(module, spec.class_name)
    return handler_class


def build_channel(name: str, env: Env, settings: Settings | None = None) -> NotificationHandler | None:
    """The channel ``name`` built from ``env`` (None when its variables are unset), with
    the core ``settings`` (send timeout, plain-http opt-in) passed to its ``from_env``.

    Raises:
        KeyError: no channel has that name.
        ImportError: the channel's module (or its optional dependency) is not available.
        ConfigurationError: a variable is set but wrong (names the variable).
    """
    import inspect

    from_env: Callable[..., NotificationHandler | None] = load_channel_class(name).from_env
    if settings is not None and "settings" in inspect.signature(from_env).parameters:
        return from_env(env, settings=settings)
    return from_env(env)


def exported_classes() -> dict[str, str]:
    """Public class name -> module, for ``afs_callbacks``'s lazy attributes."""
    return {spec.class_name: spec.module for spec in REGISTRY.values()}


def channel_variables() -> tuple[str, ...]:
    """Every channel variable, routing ones included (``SLACK_WEBHOOK_URL``, ``SMS_MIN_LEVEL``)."""
    names: list[str] = []
    for spec in REGISTRY.values():
        names += [*spec.variables, *spec.routing_variables]
    return tuple(dict.fromkeys(names))


def env_prefixes() -> tuple[str, ...]:
    """The prefixes of every channel variable (``SLACK_``, ``SMTP_``, ``TO_EMAILS``...): what
    a test clears so that a developer's own settings do not leak into it. A variable outside
    its channel's prefix counts by its first word when others share it (``SMTP_``), else
    whole (``TO_EMAILS``), so that no unrelated variable (``TO_...``) is caught."""
    prefixes = []
    for spec in REGISTRY.values():
        prefixes.append(f"{spec.prefix}_")
        others = [name for name in spec.variables if not name.startswith(f"{spec.prefix}_")]
        words = [name.split("_")[0] for name in others]
        prefixes += [
            f"{word}_" if words.count(word) > 1 else name for name, word in zip(others, words, strict=True)
        ]
    return tuple(dict.fromkeys(prefixes))


__all__ = [
    "CHANNELS",
    "REGISTRY",
    "ChannelSpec",
    "ChannelStatus",
    "DeliveryResult",
    "NotificationHandler",
    "Outcome",
    "build_channel",
    "channel_variables",
    "env_prefixes",
    "exported_classes",
    "load_channel_class",
]
