"""Channels: one module per service, each a :class:`NotificationHandler`.

Modules are imported only when a channel is used, so ``import afs_callbacks`` stays cheap
and a channel's optional dependency is needed only by those who use it.
"""

from __future__ import annotations

import importlib

from afs_callbacks.channels.base import (
    ChannelStatus,
    DeliveryResult,
    NotificationHandler,
    Outcome,
)

#: Channel name -> "module:Class". The order is the order ``afs-notify status`` lists them.
CHANNELS: dict[str, str] = {
    "desktop": "afs_callbacks.channels.desktop:DesktopNotifier",
    "email": "afs_callbacks.channels.email:EmailNotifier",
    "slack": "afs_callbacks.channels.slack:SlackNotifier",
    "discord": "afs_callbacks.channels.discord:DiscordNotifier",
    "webhook": "afs_callbacks.channels.webhook:WebhookNotifier",
    "telegram": "afs_callbacks.channels.telegram:TelegramNotifier",
    "teams": "afs_callbacks.channels.teams:TeamsNotifier",
    "ntfy": "afs_callbacks.channels.ntfy:NtfyNotifier",
    "pagerduty": "afs_callbacks.channels.pagerduty:PagerDutyNotifier",
    "alertmanager": "afs_callbacks.channels.alertmanager:AlertmanagerNotifier",
    "apprise": "afs_callbacks.channels.apprise:AppriseNotifier",
    "console": "afs_callbacks.channels.console:ConsoleNotifier",
}


def load_channel_class(name: str) -> type[NotificationHandler]:
    """Import and return the handler class registered under ``name``.

    Raises:
        KeyError: no channel has that name.
        ImportError: the channel's module is not available.
    """
    module_name, _, class_name = CHANNELS[name].partition(":")
    module = importlib.import_module(module_name)
    handler_class: type[NotificationHandler] = getattr(module, class_name)
    return handler_class


__all__ = [
    "CHANNELS",
    "ChannelStatus",
    "DeliveryResult",
    "NotificationHandler",
    "Outcome",
    "load_channel_class",
]
