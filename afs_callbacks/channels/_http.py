"""What every HTTP channel shares: a per-process session, timeouts, answer classification.

A channel subclasses :class:`HttpChannel`, builds its payload and calls :meth:`post`; the
answer comes back as a :class:`DeliveryResult`: 2xx delivered; 408, 429 and 5xx retried
with the service's wait hint; the service's permanent codes dead (and the channel disabled
when the code means the destination is gone). ``requests`` exception text embeds the full
URL, so every such text is redacted before it leaves this module, with every service's
secret shapes known (building an HTTP channel loads the channel declarations once).
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from afs_callbacks.channels import channel_classes
from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.redaction import redact

if TYPE_CHECKING:
    import requests

USER_AGENT = "afs-callbacks (+https://pypi.org/project/afs-callbacks/)"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (decimals accepted, unlike
    urllib3) or an HTTP date. None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if seconds == seconds else None


class HttpChannel(NotificationHandler):
    """Base of the channels that POST to an HTTP endpoint.

    Subclasses set the class attributes below to their service's documented answers and
    may override :meth:`retry_hint` (a wait hint in the body) and :meth:`classify`.

    Args:
        timeout: seconds for connecting and for reading the answer (each).
    """

    #: Codes that retrying cannot fix.
    permanent_statuses: ClassVar[frozenset[int]] = frozenset({400, 401, 403, 404, 410, 413, 422})
    #: Codes that mean the destination itself is gone or refuses us: stop using it.
    disabling_statuses: ClassVar[frozenset[int]] = frozenset({401, 403, 404, 410})
    #: Codes worth retrying besides 5xx.
    retry_statuses: ClassVar[frozenset[int]] = frozenset({408, 425, 429})

    def __init__(self, *, timeout: float = 10.0) -> None:
        # Each service declares the shapes of its secrets (a Slack webhook path); a channel
        # that forgot to register its URL, or posts to another service's, is still masked.
        channel_classes()
        self.timeout = timeout
        self._session: requests.Session | None = None
        self._session_pid = 0

    @property
    def session(self) -> requests.Session:
        """A ``requests.Session`` of this process (sessions hold sockets: not across fork)."""
        import requests

        if self._session is None or self._session_pid != os.getpid():
            self._session = requests.Session()
            self._session.headers["User-Agent"] = USER_AGENT
            self._session_pid = os.getpid()
        return self._session

    def post(
        self,
        url: str,
        *,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response | DeliveryResult:
        """POST and return the response, or a retry result for a network failure."""
        import requests

        try:
            return self.session.post(
                url,
                json=json,
                data=data,
                files=files,
                headers=dict(headers or {}),
                params=params,
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,
            )
        except requests.RequestException as error:
            return DeliveryResult.retry(f"{type(error).__name__}: {redact(error)}")

    def deliver(self, url: str, **kwargs: Any) -> DeliveryResult:
        """:meth:`post` then :meth:`classify`: what most channels' ``send`` ends with."""
        response = self.post(url, **kwargs)
        if isinstance(response, DeliveryResult):
            return response
        return self.classify(response)

    def classify(self, response: requests.Response) -> DeliveryResult:
        """Turn the service's answer into delivered / retry / permanent."""
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult.delivered(f"HTTP {status}")
        detail = f"HTTP {status}: {short_body(response)}".rstrip(": ")
        if status in self.retry_statuses or status >= 500:
            return DeliveryResult.retry(detail, self.retry_hint(response))
        return DeliveryResult.permanent(detail, disable_channel=status in self.disabling_statuses)

    def retry_hint(self, response: requests.Response) -> float | None:
        """The service's wait hint in seconds; by default the ``Retry-After`` header."""
        return parse_retry_after(response.headers.get("Retry-After"))

    def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None and self._session_pid == os.getpid():
            self._session.close()
        self._session = None

    def __getstate__(self) -> dict[str, Any]:
        # Channels travel to DDP workers (ddp_spawn pickles callbacks): sessions do not.
        state = self.__dict__.copy()
        state["_session"] = None
        state["_session_pid"] = 0
        return state


#: How much of an answer is read for an error detail: enough for any echoed secret to be
#: whole when it is redacted, before the text is cut to ``limit``.
_BODY_SCAN = 65_536


def short_body(response: requests.Response, limit: int = 300) -> str:
    """The answer's text for an error detail: redacted first, then cut to ``limit``.

    Cutting first would leave half of an echoed secret that no longer matches anything.
    """
    try:
        text = response.text[:_BODY_SCAN]
    except Exception:
        return ""
    text = redact(" ".join(text.split()))
    return text[:limit]


def json_object(response: requests.Response) -> dict[str, Any]:
    """The answer's JSON object, or ``{}`` when it is not one (an HTML error page, a list)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
