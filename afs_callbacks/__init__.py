"""afs-callbacks: tell people what their training runs are doing.

Importing the package imports no ML framework and no channel: channel classes such as
``SlackNotifier`` load on first access, framework callbacks live in
``afs_callbacks.integrations.<framework>``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from afs_callbacks.channels.base import ChannelStatus, DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.config import Env, Settings
from afs_callbacks.events import Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import AFSCallbacksError, ConfigurationError, MissingExtraError
from afs_callbacks.manager import FlushReport, NotificationManager, Route

if TYPE_CHECKING:
    from afs_callbacks.channels.alertmanager import AlertmanagerNotifier
    from afs_callbacks.channels.apprise import AppriseNotifier
    from afs_callbacks.channels.console import ConsoleNotifier
    from afs_callbacks.channels.desktop import DesktopNotifier
    from afs_callbacks.channels.discord import DiscordNotifier
    from afs_callbacks.channels.email import EmailNotifier
    from afs_callbacks.channels.ntfy import NtfyNotifier
    from afs_callbacks.channels.pagerduty import PagerDutyNotifier
    from afs_callbacks.channels.slack import SlackNotifier
    from afs_callbacks.channels.teams import TeamsNotifier
    from afs_callbacks.channels.telegram import TelegramNotifier
    from afs_callbacks.channels.webhook import WebhookNotifier
    from afs_callbacks.watch import watch

__version__ = "0.1.0"

# Public names that live in modules imported on first use (attribute -> module).
_LAZY = {
    "AlertmanagerNotifier": "afs_callbacks.channels.alertmanager",
    "AppriseNotifier": "afs_callbacks.channels.apprise",
    "ConsoleNotifier": "afs_callbacks.channels.console",
    "DesktopNotifier": "afs_callbacks.channels.desktop",
    "DiscordNotifier": "afs_callbacks.channels.discord",
    "EmailNotifier": "afs_callbacks.channels.email",
    "NtfyNotifier": "afs_callbacks.channels.ntfy",
    "PagerDutyNotifier": "afs_callbacks.channels.pagerduty",
    "SlackNotifier": "afs_callbacks.channels.slack",
    "TeamsNotifier": "afs_callbacks.channels.teams",
    "TelegramNotifier": "afs_callbacks.channels.telegram",
    "WebhookNotifier": "afs_callbacks.channels.webhook",
    "watch": "afs_callbacks.watch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'afs_callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AFSCallbacksError",
    "AlertmanagerNotifier",
    "AppriseNotifier",
    "Attachment",
    "ChannelStatus",
    "ConfigurationError",
    "ConsoleNotifier",
    "DeliveryResult",
    "DesktopNotifier",
    "DiscordNotifier",
    "EmailNotifier",
    "Env",
    "EventType",
    "FlushReport",
    "MissingExtraError",
    "NotificationEvent",
    "NotificationHandler",
    "NotificationLevel",
    "NotificationManager",
    "NtfyNotifier",
    "Outcome",
    "PagerDutyNotifier",
    "Route",
    "Settings",
    "SlackNotifier",
    "TeamsNotifier",
    "TelegramNotifier",
    "WebhookNotifier",
    "watch",
]
