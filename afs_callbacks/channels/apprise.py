"""Apprise channel: any of Apprise's 100+ services, delivered through the same outbox.

Needs the optional ``apprise`` package (``pip install 'afs-callbacks[apprise]'``). Each
Apprise URL holds its service's credentials, so every URL is a secret: only its scheme is
ever shown, and the URL (with its password and long path or query parts) is registered
for redaction, which also covers what Apprise itself logs.

Apprise reports success or failure per call, without a reason or a wait hint, so a failure
is retried with the outbox's backoff. Each URL gets its own ``Apprise`` object, so a retry
goes only to the URLs that failed; the ones that already delivered the event are skipped
(within this process; the outbox's at-least-once delivery may repeat it across processes).
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from afs_callbacks.channels.base import DeliveryResult, NotificationHandler
from afs_callbacks.config import Env, Settings, channel_settings, is_loopback
from afs_callbacks.events import NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError, MissingExtraError
from afs_callbacks.formatting import context_fields, format_metrics, truncate
from afs_callbacks.redaction import MASK, install_log_redaction, redact, register_secret

#: Apprise's notification types (they set icons and colours on most services).
LEVEL_TYPES = {
    NotificationLevel.INFO: "info",
    NotificationLevel.SUCCESS: "success",
    NotificationLevel.WARNING: "warning",
    NotificationLevel.ERROR: "failure",
    NotificationLevel.CRITICAL: "failure",
}

# A new URL starts where a scheme follows whitespace or a comma; commas inside a URL's
# query (``mailto://...?to=a@x.org,b@y.org``) stay with it.
_URL_START = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_SEPARATORS = re.compile(r"[/:@?&=#,;]")
_MAX_REMEMBERED = 1000
#: Apprise schemes that speak plain http (their ``...s://`` twin speaks https).
PLAIN_HTTP_SCHEMES = frozenset(
    {
        "json",
        "xml",
        "form",
        "apprise",
        "gotify",
        "mmost",
        "rocket",
        "matrix",
        "ntfy",
        "nctalk",
        "ncloud",
        "kodi",
        "xbmc",
        "emby",
        "enigma2",
        "hassio",
        "signal",
        "bark",
        "pjet",
        "lametric",
    }
)
_SECRET_PART_CHARS = 10


def split_urls(text: str | None) -> list[str]:
    """``"json://a/x, discord://b/y tgram://c"`` -> the three URLs."""
    return [url.strip(" ,\t\r\n") for url in _URL_START.split(text or "") if url.strip(" ,\t\r\n")]


def _import_apprise() -> Any:
    try:
        import apprise
    except ImportError:
        raise MissingExtraError("The Apprise channel", "apprise") from None
    return apprise


class AppriseNotifier(NotificationHandler):
    """Send each event to one or more Apprise URLs.

    Args:
        urls: Apprise URLs (``json://host/path``, ``discord://id/token``, ``mailto://...``);
            all are secrets.

    Raises:
        MissingExtraError: the ``apprise`` package is not installed.
        ConfigurationError: no URL, or a URL Apprise does not understand (shown by its
            scheme and position only).

    Example::

        AppriseNotifier(["tgram://bottoken/ChatID", "json://hooks.example.org/afs"])
    """

    name: ClassVar[str] = "apprise"
    variables: ClassVar[tuple[str, ...]] = ("APPRISE_URLS",)
    own_prefixes: ClassVar[tuple[str, ...]] = ("APPRISE_",)
    listing_order: ClassVar[int] = 120
    supports_images: ClassVar[bool] = True

    def __init__(self, urls: Iterable[str], *, allow_http: bool = False) -> None:
        apprise = _import_apprise()
        # Apprise logs plugin activity on its own logger, request URLs included.
        install_log_redaction(logging.getLogger("apprise"))
        self._urls = [url.strip() for url in urls if url.strip()]
        if not self._urls:
            raise ConfigurationError("APPRISE_URLS", "names no URL")
        self._targets: list[tuple[str, Any]] = []
        for position, url in enumerate(self._urls, start=1):
            _register_url_secrets(url)
            shown = _scheme_only(url)
            _check_plain_http(url, position, shown, allow_http=allow_http)
            target = apprise.Apprise()
            if not target.add(url):
                raise ConfigurationError(
                    "APPRISE_URLS", f"URL {position} ({shown}) is not one Apprise understands"
                )
            self._targets.append((shown, target))
        # event id -> indices of the URLs that already have it (a retry skips them).
        self._done: OrderedDict[str, set[int]] = OrderedDict()

    def send(self, event: NotificationEvent) -> DeliveryResult:
        """Notify every URL that does not have the event yet; any failure retries later.

        Attachments go as real files in a private temporary folder (Apprise's plugins open
        attachments by path: ``form://`` cannot read an in-memory one). A URL that fails
        while carrying them is answered as a refused attachment, so the sender sends the
        message again without them at once rather than retrying it for a day; Apprise
        says no more than "failed", so a network failure reads the same, and that resend
        is then retried as usual.
        """
        done = self._done.setdefault(event.id, set())
        self._done.move_to_end(event.id)
        while len(self._done) > _MAX_REMEMBERED:
            self._done.popitem(last=False)
        body = self.body_text(event)
        failed = []
        with _attachment_files(event) as attach:
            for index, (shown, target) in enumerate(self._targets):
                if index in done:
                    continue
                try:
                    ok = bool(
                        target.notify(
                            body=body,
                            title=truncate(event.title, 250),
                            notify_type=LEVEL_TYPES[event.level],
                            body_format="text",
                            attach=attach,
                        )
                    )
                except Exception as error:  # a plugin bug must not reach the sender
                    ok = False
                    shown = f"{shown} ({type(error).__name__}: {redact(error)})"
                if ok:
                    done.add(index)
                else:
                    failed.append(shown)
        if failed and attach:
            return DeliveryResult.refused_attachment(
                f"apprise could not deliver to {', '.join(failed)}"
                f" with {len(event.attachments)} attachment(s)"
            )
        if failed:
            return DeliveryResult.retry(f"apprise could not deliver to {', '.join(failed)}")
        self._done.pop(event.id, None)
        return DeliveryResult.delivered(f"{len(self._targets)} URL(s)")

    @staticmethod
    def body_text(event: NotificationEvent) -> str:
        """Plain text: the message, then the run's fields and metrics (Apprise escapes it
        for each service's markup)."""
        lines = [event.message] if event.message else []
        lines += [f"{label}: {value}" for label, value in context_fields(event)]
        if event.metrics:
            lines.append("Metrics: " + format_metrics(event.metrics))
        return "\n".join(lines) or event.title

    def describe(self) -> str:
        """The URLs' schemes only (``apprise json://***, tgram://***``)."""
        return "apprise " + ", ".join(shown for shown, _ in self._targets)

    @classmethod
    def from_env(cls, env: Env, settings: Settings | None = None) -> AppriseNotifier | None:
        """``APPRISE_URLS`` (comma or space separated); None when unset.

        Raises:
            MissingExtraError: set, but ``apprise`` is not installed.
            ConfigurationError: a URL Apprise does not understand, or one that sends plain
                http to a remote host without ``AFS_ALLOW_HTTP``.
        """
        settings = channel_settings(env, settings)
        urls = split_urls(env.text("APPRISE_URLS"))
        if not urls:
            return None
        return cls(urls, allow_http=settings.allow_http)


def _check_plain_http(url: str, position: int, shown: str, *, allow_http: bool) -> None:
    """Refuse an Apprise URL that sends plain http to a remote host, unless allowed: like
    every other channel, its credentials would cross the network in clear text.

    Raises:
        ConfigurationError: a plain-http scheme (``json://``, ``xml://``, ``form://``...)
            with a remote host, or a backslash that parsers read in different ways.
    """
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in PLAIN_HTTP_SCHEMES or allow_http:
        return
    if "\\" in url:
        raise ConfigurationError("APPRISE_URLS", f"URL {position} ({shown}) contains a backslash")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return  # Apprise itself refuses it below
    # A host it is only when it looks like one: ``matrix://token`` is a hosted service's key.
    if ("." in host or ":" in host or host == "localhost") and not is_loopback(host):
        raise ConfigurationError(
            "APPRISE_URLS",
            f"URL {position} ({shown}) sends plain http to a remote host, which would expose its "
            f"credentials; use {scheme}s://, or set AFS_ALLOW_HTTP=1 to allow it",
        )


def _scheme_only(url: str) -> str:
    match = _SCHEME.match(url)
    return f"{match.group(1).lower()}://{MASK}" if match else MASK


def _register_url_secrets(url: str) -> None:
    """Register the URL and the parts of it that may be credentials.

    Apprise URLs keep credentials anywhere: in the host (``discord://id/token``,
    ``tgram://bottoken/chat``), the path, the query. Plugins log and raise with URLs they
    rebuild from those parts, so the whole URL alone would not be enough. Short parts
    (``json``, ``api``, an IP address) are left alone: masking them would garble logs.
    """
    register_secret(url)
    rest = _SCHEME.sub("", url)
    pieces = _URL_SEPARATORS.split(rest)
    pieces += [unquote(piece) for piece in pieces]
    register_secret(*(piece for piece in pieces if len(piece) >= _SECRET_PART_CHARS))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    register_secret(password)


@contextlib.contextmanager
def _attachment_files(event: NotificationEvent) -> Iterator[list[str] | None]:
    """The event's files written to a private temporary folder (removed afterwards), as
    the paths Apprise attaches; None when the event has none."""
    if not event.attachments:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="afs-apprise-") as folder:  # mode 0700
        paths: list[str] = []
        for position, item in enumerate(event.attachments):
            # The file keeps its name (services show it), made safe as a file name.
            name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(item.filename).name).lstrip(".")
            name = name or f"attachment-{position}"
            path = Path(folder) / name
            if str(path) in paths:
                path = Path(folder) / f"{position}-{name}"
            path.write_bytes(item.data)
            paths.append(str(path))
        yield paths
