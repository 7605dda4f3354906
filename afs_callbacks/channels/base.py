"""The contract every channel keeps: format an event, send it, classify the answer.

A channel never retries, sleeps or queues: the sender does that from the
:class:`DeliveryResult` the channel returns. Configuration errors raise at construction
(:class:`~afs_callbacks.exceptions.ConfigurationError`); delivery problems never raise.

A channel also describes itself, as Apprise's plugins do: its class attributes say its
name, the environment variables it reads (and the names people mistype them as), its
service's pace, attachment and card support, its hosts and the shapes of its secrets.
The registry (:mod:`afs_callbacks.channels`) reads them; nothing else lists channels.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from afs_callbacks.outcome import Outcome as RunOutcome
from afs_callbacks.redaction import SecretPattern, redact, register_pattern

if TYPE_CHECKING:
    from afs_callbacks.config import Env, Settings
    from afs_callbacks.events import NotificationEvent, NotificationLevel
    from afs_callbacks.runstate import RunState


class Outcome(str, Enum):
    """How one delivery attempt ended."""

    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class DeliveryResult:
    """The answer of :meth:`NotificationHandler.send`.

    Args:
        outcome: delivered, retry later, or permanent failure.
        detail: a short, already redacted explanation (the service's error, an HTTP status).
        retry_after: the service's own wait hint in seconds, if it gave one.
        disable_channel: the destination is gone (a deleted webhook, a revoked token):
            stop sending to it in this process instead of failing every message.
        message_id: the id the service gave the message (a live card keeps it to edit).
        gone: for an edit, the message no longer exists (deleted): post a new one.
        attachment_refused: the service refused what the event carried (a file too big,
            a plugin that cannot read it): the sender sends the message again without
            its attachments, once, and the history notes it (:meth:`refused_attachment`).
        pauses_channel: a ``retry_after`` holds the whole channel (a rate limit); False for
            a message the channel itself holds back for a while (:meth:`later`).
    """

    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None
    disable_channel: bool = False
    message_id: str | None = None
    gone: bool = False
    attachment_refused: bool = False
    pauses_channel: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", redact(self.detail))

    @property
    def ok(self) -> bool:
        """True when the message was delivered."""
        return self.outcome is Outcome.DELIVERED

    @classmethod
    def delivered(cls, detail: str = "") -> DeliveryResult:
        """The service accepted the message."""
        return cls(Outcome.DELIVERED, detail)

    @classmethod
    def retry(cls, detail: str, retry_after: float | None = None) -> DeliveryResult:
        """A transient failure (429, 5xx, network): try again, after ``retry_after`` if given."""
        return cls(Outcome.RETRY, detail, retry_after)

    @classmethod
    def later(cls, detail: str, seconds: float) -> DeliveryResult:
        """Not yet: send this message again in ``seconds`` (the channel holds it back, the
        service refused nothing); the channel's other messages go on meanwhile."""
        return cls(Outcome.RETRY, detail, max(0.0, seconds), pauses_channel=False)

    @classmethod
    def permanent(cls, detail: str, *, disable_channel: bool = False) -> DeliveryResult:
        """A failure that retrying cannot fix (bad request, dead webhook, bad credentials)."""
        return cls(Outcome.PERMANENT, detail, disable_channel=disable_channel)

    @classmethod
    def refused_attachment(cls, detail: str) -> DeliveryResult:
        """The service refused the message because of its attachment (a 413, an SMTP 552,
        a plugin that cannot open the file). As it stands the message cannot go
        (permanent); without its attachments it may, and the sender tries that once."""
        return cls(Outcome.PERMANENT, detail, attachment_refused=True)


def routed_level(event: NotificationEvent) -> NotificationLevel:
    """The level ``event`` is routed, texted and paged by: for the end of a run, its
    outcome's level (:meth:`~afs_callbacks.outcome.Outcome.of_event`) or the event's own
    where that is higher (an out-of-memory failure is critical); any other event's own.
    A NaN stop is an error wherever the event's own level came from."""
    outcome = RunOutcome.of_event(event)
    if outcome is None:
        return event.level
    return max(event.level, outcome.level, key=lambda level: level.severity)


@dataclass(frozen=True)
class ChannelStatus:
    """Whether a channel can send, and why not when it cannot; secrets already masked."""

    name: str
    configured: bool
    reason: str = ""
    destination: str = ""


class NotificationHandler(abc.ABC):
    """Base class of every channel (the seed system's name, kept).

    Subclasses implement :meth:`send` and usually :meth:`is_configured`, :meth:`describe`
    and :meth:`from_env`. Class attributes declare the service's limits so the sender can
    pace messages and formatters can cut text, and what the registry derives from a
    channel module in ``afs_callbacks/channels/`` (its exports, routing variables, the
    variables ``afs-notify status`` knows, the hosts it checks for misspellings).

    Example::

        class PrintNotifier(NotificationHandler):
            name = "print"

            def send(self, event):
                print(event.title)
                return DeliveryResult.delivered()
    """

    #: Channel name used in routing, history and CLI output.
    name: ClassVar[str] = "handler"
    #: Smallest gap between two messages to the service, in seconds (its rate limit).
    min_interval: ClassVar[float] = 0.0
    #: Whether the channel can carry image attachments (charts).
    supports_images: ClassVar[bool] = False
    #: Whether the channel can edit a message it sent, so a run gets one live card.
    supports_cards: ClassVar[bool] = False
    #: Whether a run's end that finds the run's earlier messages still waiting is sent with
    #: them as one story (a person reads it: a chat, a mailbox, a phone). False where each
    #: event is an alert state that must fire and resolve on its own (Alertmanager,
    #: PagerDuty), or a program reads each event by its type (the webhook).
    tells_stories: ClassVar[bool] = True

    #: The prefix of its routing variables ``<PREFIX>_MIN_LEVEL``, ``_EVENTS``, ``_CARD``
    #: (empty: the name in capitals).
    prefix: ClassVar[str] = ""
    #: Every environment variable :meth:`from_env` reads (routing ones aside), in the
    #: order ``.env.example`` documents them.
    variables: ClassVar[tuple[str, ...]] = ()
    #: Names people write from other tools' habits -> the variable they mean
    #: (``SLACK_URL`` -> ``SLACK_WEBHOOK_URL``), for ``afs-notify status``'s "did you mean".
    variable_aliases: ClassVar[Mapping[str, str]] = {}
    #: Variable prefixes no other common tool uses: any unknown name with one is surely
    #: meant for this channel (``TWILIO_``); a name shared with other tools' (``SLACK_``)
    #: counts only in our ``.env``.
    own_prefixes: ClassVar[tuple[str, ...]] = ()
    #: The default of ``<PREFIX>_MIN_LEVEL`` (SMS costs money: ``error``).
    default_min_level: ClassVar[str] = "info"
    #: Where ``afs-notify status`` and the registry list it: lower first, ties by name.
    listing_order: ClassVar[int] = 500
    #: The service's own hosts: a host that looks like a misspelling of one is refused in
    #: any channel's URL (``hooks.slak.com``).
    hosts: ClassVar[tuple[str, ...]] = ()
    #: Shapes of the service's secrets, masked in every text even when never registered
    #: (a webhook path in a ``requests`` error); they apply once the class exists.
    secret_patterns: ClassVar[tuple[SecretPattern, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        register_pattern(*vars(cls).get("secret_patterns", ()))

    @abc.abstractmethod
    def send(self, event: NotificationEvent) -> DeliveryResult | bool | None:
        """Deliver one event and say how it went. Must not raise for delivery problems.

        Return a :class:`DeliveryResult`. Also accepted, for seed-system and minimal
        handlers: ``None`` (a ``send`` that just does its work and returns nothing) means
        delivered; True means delivered, False means retry later. An exception is retried
        with backoff, its text redacted.
        """

    def is_configured(self) -> bool:
        """True when the channel has what it needs to send."""
        return self.status().configured

    def status(self) -> ChannelStatus:
        """Whether the channel can send, and the reason when it cannot."""
        return ChannelStatus(self.name, True, destination=self.describe())

    def describe(self) -> str:
        """Where messages go, with every secret masked (safe for logs and CLI output)."""
        return self.name

    def check(self) -> DeliveryResult:
        """Probe reachability without posting a message, where the service allows it.

        The default says a probe is not possible; ``afs-notify test`` sends a real message.
        """
        return DeliveryResult.permanent("this channel cannot be probed without sending")

    def post_card(self, state: RunState) -> DeliveryResult:
        """Post a run's live card; a delivered result carries the new ``message_id``.

        Only channels with ``supports_cards`` implement it; it must not raise.
        """
        return DeliveryResult.permanent(f"{self.name} cannot edit messages")

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        """Edit the card posted as ``message_id`` to show ``state``. An unchanged text counts
        as delivered; a deleted message answers ``gone=True`` (the card is posted anew)."""
        return DeliveryResult.permanent(f"{self.name} cannot edit messages")

    def close(self) -> None:  # noqa: B027 - optional hook with nothing to do by default
        """Release sessions and connections; called when the manager closes."""

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> NotificationHandler | None:
        """Build the channel from environment settings, or None when they are absent.

        ``settings`` carries the core's shared options (send timeout, plain-http permission);
        None reads them from ``env``.

        Raises:
            ConfigurationError: a variable is set but wrong (names the variable).
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"
