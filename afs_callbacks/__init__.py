"""afs-callbacks: tell people what their training runs are doing.

Importing the package imports nothing else: every public name (``NotificationManager``,
``Settings``, channel classes such as ``SlackNotifier``) loads on first access, so a
process that needs one module (the death watcher) starts fast. No ML framework is ever
loaded from here; framework callbacks live in ``afs_callbacks.integrations.<framework>``.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For type checkers only (at run time every public name loads on first access, see
    # _CORE and _lazy(), so that ``import afs_callbacks`` and the death watcher process,
    # which imports one module of the package, start fast). One line per channel class;
    # tests/test_packaging.py checks that the two agree.
    from afs_callbacks.channels.alertmanager import AlertmanagerNotifier as AlertmanagerNotifier
    from afs_callbacks.channels.apprise import AppriseNotifier as AppriseNotifier
    from afs_callbacks.channels.base import ChannelStatus as ChannelStatus
    from afs_callbacks.channels.base import DeliveryResult as DeliveryResult
    from afs_callbacks.channels.base import NotificationHandler as NotificationHandler
    from afs_callbacks.channels.base import Outcome as Outcome
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
    from afs_callbacks.config import Env as Env
    from afs_callbacks.config import Settings as Settings
    from afs_callbacks.events import Attachment as Attachment
    from afs_callbacks.events import EventType as EventType
    from afs_callbacks.events import NotificationEvent as NotificationEvent
    from afs_callbacks.events import NotificationLevel as NotificationLevel
    from afs_callbacks.exceptions import AFSCallbacksError as AFSCallbacksError
    from afs_callbacks.exceptions import ConfigurationError as ConfigurationError
    from afs_callbacks.exceptions import MissingExtraError as MissingExtraError
    from afs_callbacks.manager import FlushReport as FlushReport
    from afs_callbacks.manager import NotificationManager as NotificationManager
    from afs_callbacks.manager import Route as Route
    from afs_callbacks.sweeps import Sweep as Sweep
    from afs_callbacks.watch import watch as watch

__version__ = "0.1.0"

# The core's public names (attribute -> module); the channel classes come from the registry.
_CORE = {
    "ChannelStatus": "afs_callbacks.channels.base",
    "DeliveryResult": "afs_callbacks.channels.base",
    "NotificationHandler": "afs_callbacks.channels.base",
    "Outcome": "afs_callbacks.channels.base",
    "Env": "afs_callbacks.config",
    "Settings": "afs_callbacks.config",
    "Attachment": "afs_callbacks.events",
    "EventType": "afs_callbacks.events",
    "NotificationEvent": "afs_callbacks.events",
    "NotificationLevel": "afs_callbacks.events",
    "AFSCallbacksError": "afs_callbacks.exceptions",
    "ConfigurationError": "afs_callbacks.exceptions",
    "MissingExtraError": "afs_callbacks.exceptions",
    "FlushReport": "afs_callbacks.manager",
    "NotificationManager": "afs_callbacks.manager",
    "Route": "afs_callbacks.manager",
    "Sweep": "afs_callbacks.sweeps",
    "watch": "afs_callbacks.watch",
}


@functools.lru_cache(maxsize=1)
def _lazy() -> dict[str, str]:
    """Every public name and its module: the core's, and every registered channel class."""
    from afs_callbacks.channels import exported_classes

    return {**_CORE, **exported_classes()}


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return sorted(_lazy())
    # Only a channel class needs the channel scan (which imports every channel module); a
    # lowercase name is a submodule being imported (``from afs_callbacks import messages``).
    module = _CORE.get(name)
    if module is None and not name.islower():
        module = _lazy().get(name)
    if module is None:
        raise AttributeError(f"module 'afs_callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
