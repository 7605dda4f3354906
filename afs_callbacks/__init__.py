"""afs-callbacks: tell people what their training runs are doing.

Importing the package imports no ML framework and no channel: channel classes such as
``SlackNotifier`` load on first access, framework callbacks live in
``afs_callbacks.integrations.<framework>``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from afs_callbacks.channels import exported_classes
from afs_callbacks.channels.base import ChannelStatus, DeliveryResult, NotificationHandler, Outcome
from afs_callbacks.config import Env, Settings
from afs_callbacks.events import Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import AFSCallbacksError, ConfigurationError, MissingExtraError
from afs_callbacks.manager import FlushReport, NotificationManager, Route

if TYPE_CHECKING:
    # For type checkers only (at run time these load on first access, see _LAZY). One
    # line per REGISTRY entry; tests/test_packaging.py checks that the two agree.
    from afs_callbacks.channels.alertmanager import AlertmanagerNotifier as AlertmanagerNotifier
    from afs_callbacks.channels.apprise import AppriseNotifier as AppriseNotifier
    from afs_callbacks.channels.console import ConsoleNotifier as ConsoleNotifier
    from afs_callbacks.channels.desktop import DesktopNotifier as DesktopNotifier
    from afs_callbacks.channels.discord import DiscordNotifier as DiscordNotifier
    from afs_callbacks.channels.email import EmailNotifier as EmailNotifier
    from afs_callbacks.channels.ntfy import NtfyNotifier as NtfyNotifier
    from afs_callbacks.channels.pagerduty import PagerDutyNotifier as PagerDutyNotifier
    from afs_callbacks.channels.slack import SlackNotifier as SlackNotifier
    from afs_callbacks.channels.sms import SmsNotifier as SmsNotifier
    from afs_callbacks.channels.teams import TeamsNotifier as TeamsNotifier
    from afs_callbacks.channels.telegram import TelegramNotifier as TelegramNotifier
    from afs_callbacks.channels.webhook import WebhookNotifier as WebhookNotifier
    from afs_callbacks.watch import watch as watch

__version__ = "0.1.0"

# Public names that live in modules imported on first use (attribute -> module): every
# registered channel's class, and watch().
_LAZY = {**exported_classes(), "watch": "afs_callbacks.watch"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'afs_callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [  # the channel classes come from the registry (via _LAZY)
    "AFSCallbacksError",
    "Attachment",
    "ChannelStatus",
    "ConfigurationError",
    "DeliveryResult",
    "Env",
    "EventType",
    "FlushReport",
    "MissingExtraError",
    "NotificationEvent",
    "NotificationHandler",
    "NotificationLevel",
    "NotificationManager",
    "Outcome",
    "Route",
    "Settings",
    *sorted(_LAZY),
]
