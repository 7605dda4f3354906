"""Who may command a run, through what, and for how long a command stays good.

Off unless enabled: ``AFS_CONTROL`` names the surfaces that may command runs (``cli``,
``dashboard``, ``telegram``, ``slack``, or ``all``); unset, a run takes no commands and the
surfaces refuse. The setting is read twice, on purpose: the run's own process decides
what it takes (it publishes the list in its state), and each surface refuses what its own
process has not enabled.

On chat surfaces only allow-listed identities may act:

* Telegram: ``AFS_CONTROL_TELEGRAM_USERS`` (user ids, comma-separated), tapping in the
  configured chat (``TELEGRAM_CHAT_ID``) or in their own private chat with the bot; without
  the list, anyone in the configured chat (for a private chat: only its owner).
* Slack: ``AFS_CONTROL_SLACK_USERS`` (member ids ``U…``) in the configured channel
  (``SLACK_CHANNEL``); without the list, anyone in that channel.

A command that a run has not acted on within ``AFS_CONTROL_MAX_AGE`` seconds (120) is
ignored, and so is a confirmation tap later than that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from afs_callbacks.config import CONTROL_SURFACES, Env, Settings

CLI = "cli"
DASHBOARD = "dashboard"
TELEGRAM = "telegram"
SLACK = "slack"
#: A rule declared with the run (``rules=``): enabled by declaring it, not by AFS_CONTROL.
RULE = "rule"
SURFACES = CONTROL_SURFACES


@dataclass(frozen=True)
class ControlPolicy:
    """Who may command runs and for how long a command stays good.

    Attributes:
        surfaces: the surfaces enabled (``AFS_CONTROL``); empty: control is off.
        max_age: seconds after which a command not acted on is ignored.
        telegram_users: Telegram user ids allowed to act (``AFS_CONTROL_TELEGRAM_USERS``).
        slack_users: Slack member ids allowed to act (``AFS_CONTROL_SLACK_USERS``).
    """

    surfaces: tuple[str, ...] = ()
    max_age: float = 120.0
    telegram_users: frozenset[str] = field(default_factory=frozenset)
    slack_users: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> ControlPolicy:
        """The policy of ``settings`` with the allow-lists of ``env`` (default: the process
        environment over ``.env``)."""
        if env is None:
            env = Env(os.environ, env_file=None)
        elif not isinstance(env, Env):
            env = Env(env, env_file=False)
        return cls(
            surfaces=tuple(settings.control),
            max_age=settings.control_max_age,
            telegram_users=frozenset(env.items_list("AFS_CONTROL_TELEGRAM_USERS")),
            slack_users=frozenset(env.items_list("AFS_CONTROL_SLACK_USERS")),
        )

    @property
    def enabled(self) -> bool:
        """Whether any surface may command runs."""
        return bool(self.surfaces)

    def allows(self, source: str) -> bool:
        """Whether ``source`` is enabled (a rule always is: it was declared with the run)."""
        return source == RULE or source in self.surfaces

    def telegram_refusal(self, user_id: str, chat_id: str, configured_chat: str) -> str | None:
        """Why a Telegram user may not act from a chat (None: allowed)."""
        if self.telegram_users:
            if user_id not in self.telegram_users:
                return f"Telegram user {user_id} is not in AFS_CONTROL_TELEGRAM_USERS"
            if chat_id not in (configured_chat, user_id):
                return f"chat {chat_id} is neither the configured chat nor the user's own"
            return None
        if chat_id != configured_chat:
            return f"chat {chat_id} is not the configured chat (TELEGRAM_CHAT_ID)"
        return None

    def slack_refusal(self, user_id: str, channel_id: str, configured: tuple[str, ...]) -> str | None:
        """Why a Slack member may not act from a channel (None: allowed). ``configured``
        holds the configured channel's names and id."""
        if channel_id not in configured:
            return f"channel {channel_id} is not the configured channel (SLACK_CHANNEL)"
        if self.slack_users and user_id not in self.slack_users:
            return f"Slack user {user_id} is not in AFS_CONTROL_SLACK_USERS"
        return None


__all__ = ["CLI", "DASHBOARD", "RULE", "SLACK", "SURFACES", "TELEGRAM", "ControlPolicy"]
