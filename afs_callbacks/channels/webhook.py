"""Generic webhook channel: the event as JSON, signed the Standard Webhooks way.

The body is :meth:`NotificationEvent.to_dict` (a receiver can rebuild the event with
``NotificationEvent.from_dict``). Every request carries ``webhook-id`` (the event id, the
same on every retry, so a receiver can drop duplicates of an at-least-once delivery) and
``webhook-timestamp`` (Unix seconds of this attempt); with a secret, also
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

408, 429 and 5xx are retried (``Retry-After`` honoured); 410 Gone disables the channel;
any other answer outside 2xx fails the message for good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import ClassVar

from afs_callbacks.channels._http import HttpChannel
from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.channels.hosts import check_self_hosted
from afs_callbacks.config import Env, Settings, channel_settings, validate_url
from afs_callbacks.events import NotificationEvent
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.redaction import mask_url, redact, register_secret

#: Standard Webhooks marks a base64 secret with this prefix.
SECRET_PREFIX = "whsec_"

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the channel sets itself; a user header must not silently replace them.
_RESERVED = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length"}
)


def signing_key(secret: str, variable: str = "secret") -> bytes:
    """The HMAC key of ``secret``: base64-decoded after ``whsec_``, else its UTF-8 bytes.

    Raises:
        ConfigurationError: a ``whsec_`` secret that is not valid base64 (never echoed).
    """
    if not secret:
        raise ConfigurationError(variable, "must not be empty")
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        # Standard Webhooks libraries accept unpadded keys; pad before strict decoding.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(variable, "a whsec_ secret must be followed by base64") from None
    if not key:
        raise ConfigurationError(variable, "the whsec_ secret holds no key")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class WebhookNotifier(HttpChannel):
    """POST each event as JSON to any HTTP endpoint, signed when a secret is set.

    Args:
        url: where to POST; treated as a secret (such URLs often carry a token).
        secret: the signing secret: ``whsec_<base64>`` as Standard Webhooks issues them,
            or any other string, used as raw bytes.
        headers: extra request headers (an ``Authorization`` header, say); their values
            are treated as secrets. ``webhook-*`` and ``Content-Type`` cannot be replaced.
        include_attachments: send attachments (charts) base64-encoded in the body, as
            ``to_dict()`` has them; False sends an empty ``attachments`` list.
        timeout: seconds for connecting and for reading the answer (each).
        allow_http: accept a plain-http URL to a non-loopback host.

    Raises:
        ConfigurationError: a bad URL, secret or header (no secret is echoed).
    """

    name: ClassVar[str] = "webhook"
    # A program reads it: each event arrives as its own JSON object of its own type (in
    # the run's order), never folded into the run's end.
    tells_stories: ClassVar[bool] = False
    variables: ClassVar[tuple[str, ...]] = (
        "WEBHOOK_URL",
        "WEBHOOK_SECRET",
        "WEBHOOK_HEADERS",
        "WEBHOOK_INCLUDE_ATTACHMENTS",
    )
    listing_order: ClassVar[int] = 50
    min_interval: ClassVar[float] = 0.0
    supports_images: ClassVar[bool] = True
    #: Only 410 Gone says the endpoint is gone for good; a 404 may be a redeploy.
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({410})
    retry_statuses: ClassVar[frozenset[int]] = frozenset({408, 429})

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        include_attachments: bool = True,
        timeout: float = 10.0,
        allow_http: bool = False,
    ) -> None:
        super().__init__(timeout=timeout)
        # A whsec_ key's base64 is the key itself: an echo may quote it without the prefix.
        register_secret(url, secret, secret.removeprefix(SECRET_PREFIX) if secret else None)
        register_secret(*(headers or {}).values())
        self.url = validate_url(url, "url", allow_http=allow_http)
        self._key = signing_key(secret, "secret") if secret is not None else None
        self.headers = _check_headers(headers or {}, "headers")
        self.include_attachments = include_attachments

    @property
    def signed(self) -> bool:
        """Whether requests carry a ``webhook-signature``."""
        return self._key is not None

    def body(self, event: NotificationEvent) -> bytes:
        """The exact bytes sent (and signed) for ``event``."""
        data = event.to_dict()
        if not self.include_attachments:
            data["attachments"] = []
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    def request_headers(self, event: NotificationEvent, body: bytes, timestamp: int) -> dict[str, str]:
        """The headers of one attempt: the user's, then the Standard Webhooks ones."""
        headers = dict(self.headers)
        headers["Content-Type"] = "application/json"
        headers["webhook-id"] = event.id
        headers["webhook-timestamp"] = str(timestamp)
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, event.id, timestamp, body)
        return headers

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """POST the event; 2xx delivered, 408/429/5xx retried, 410 disables, other 4xx fail."""
        try:
            body = self.body(event)
        except Exception as error:  # a serialisation bug must not become an endless retry
            return DeliveryResult.permanent(f"could not serialise the event: {redact(error)}")
        # A fresh timestamp per attempt: receivers reject signatures older than ~5 minutes.
        headers = self.request_headers(event, body, int(time.time()))
        return self.deliver(self.url, data=body, headers=headers)

    def describe(self) -> str:
        """The endpoint's host (path masked), and whether requests are signed."""
        extras = ["signed" if self.signed else "unsigned"]
        if self.headers:
            extras.append("headers: " + ", ".join(sorted(self.headers)))
        return f"{mask_url(self.url)} ({'; '.join(extras)})"

    def check(self) -> DeliveryResult:
        """A generic endpoint has no probe that is sure not to act: not possible."""
        return DeliveryResult.permanent(
            "a generic webhook cannot be probed without posting;"
            " `afs-notify test --channel webhook` sends a real message"
        )

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> WebhookNotifier | None:
        """Build from ``WEBHOOK_URL`` (required), ``WEBHOOK_SECRET``, ``WEBHOOK_HEADERS``
        (a JSON object) and ``WEBHOOK_INCLUDE_ATTACHMENTS``; None when the URL is unset.

        Raises:
            ConfigurationError: naming the variable that is wrong.
        """
        settings = channel_settings(env, settings)
        url = env.url("WEBHOOK_URL", allow_http=settings.allow_http)
        if url is None:
            if env.text("WEBHOOK_SECRET") or env.text("WEBHOOK_HEADERS"):
                raise ConfigurationError(
                    "WEBHOOK_URL", "is needed when WEBHOOK_SECRET or WEBHOOK_HEADERS is set"
                )
            return None
        check_self_hosted(url, "WEBHOOK_URL")
        secret = env.text("WEBHOOK_SECRET")
        if secret is not None:
            signing_key(secret, "WEBHOOK_SECRET")  # name the variable, not the argument
        return cls(
            url=url,
            secret=secret,
            headers=_parse_headers(env.text("WEBHOOK_HEADERS"), "WEBHOOK_HEADERS"),
            include_attachments=env.flag("WEBHOOK_INCLUDE_ATTACHMENTS", True),
            timeout=settings.send_timeout,
            allow_http=settings.allow_http,
        )


def _parse_headers(text: str | None, variable: str) -> dict[str, str]:
    """Headers from a JSON object such as ``{"Authorization": "Bearer ..."}``."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigurationError(variable, 'must be a JSON object like {"Name": "value"}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigurationError(variable, 'must be a JSON object of strings like {"Name": "value"}')
    register_secret(*value.values())
    return _check_headers(value, variable)


def _check_headers(headers: Mapping[str, str], variable: str) -> dict[str, str]:
    checked = {}
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ConfigurationError(variable, f"{name!r} is not a valid header name")
        if name.lower() in _RESERVED:
            raise ConfigurationError(variable, f"{name!r} is set by the channel itself")
        if "\r" in value or "\n" in value:
            raise ConfigurationError(variable, f"the value of {name!r} contains a line break")
        checked[name] = value
    return checked
