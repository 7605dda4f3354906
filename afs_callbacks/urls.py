"""One parse of a destination URL that serves both the safety check and the sender.

An HTTP client and ``urllib.parse`` can read the same text as two different hosts
(``http://example.com\\@127.0.0.1/hook``: the check sees the loopback address, ``requests``
connects to example.com). :func:`validate_url` therefore refuses every URL that the two
parsers do not read the same way (backslashes, spaces, control characters, a second ``@``,
odd host characters) and returns the URL rebuilt from the one parse it checked, which is
what the channel then sends to.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.redaction import mask_url

# What a host name may hold (letters, digits, dots, hyphens; underscores for internal DNS).
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")
_PROBLEM_CHARACTERS = (
    (re.compile(r"[ \t]"), "a space"),
    (re.compile(r"\\"), "a backslash"),
    (re.compile(r"[\x00-\x1f\x7f\s]"), "a control character or line break"),
)


def parse_url(url: str, variable: str, *, allow_http: bool = False, secret: bool = True) -> SplitResult:
    """Parse ``url`` once and check it: absolute http(s), one unambiguous host, and plain
    http only for loopback hosts or with ``allow_http``.

    Plain http would send a webhook's secret path over the network in clear text, so it
    needs ``AFS_ALLOW_HTTP=1`` unless the host is loopback (a local relay, a test server).

    Raises:
        ConfigurationError: naming ``variable``; the URL is shown masked when ``secret``.
    """
    shown = mask_url(url) if secret else url
    for pattern, what in _PROBLEM_CHARACTERS:
        if pattern.search(url):
            raise ConfigurationError(
                variable, f"contains {what}, which HTTP clients read in different ways: {shown}"
            )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ConfigurationError(variable, f"is not a valid URL ({error}): {shown}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(variable, f"must be an http(s) URL with a host, got {shown}")
    _check_unambiguous(url, parts, variable, shown)
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise ConfigurationError(
            variable,
            f"plain http to a remote host would expose the secret in it ({shown}); "
            "use https, or set AFS_ALLOW_HTTP=1 to allow it",
        )
    return parts


def validate_url(url: str, variable: str, *, allow_http: bool = False, secret: bool = True) -> str:
    """Check ``url`` with :func:`parse_url` and return it rebuilt from that parse.

    Raises:
        ConfigurationError: naming ``variable``; the URL is shown masked when ``secret``.
    """
    return parse_url(url, variable, allow_http=allow_http, secret=secret).geturl()


def _check_unambiguous(url: str, parts: SplitResult, variable: str, shown: str) -> None:
    """Refuse a URL whose host another parser (urllib3, which ``requests`` uses) would read
    differently, or whose authority holds more than one ``@``."""
    ambiguous = ConfigurationError(
        variable, f"is ambiguous: HTTP clients disagree on which host it names ({shown})"
    )
    if parts.netloc.count("@") > 1:
        raise ambiguous
    host = parts.hostname or ""
    if not host.isascii():
        raise ConfigurationError(
            variable, f"the host must be written in ASCII (xn--... for a non-ASCII name): {shown}"
        )
    if ":" not in host and not _HOST.match(host):
        raise ambiguous
    try:
        from urllib3.util import parse_url as urllib3_parse
    except ImportError:  # pragma: no cover - requests always brings urllib3
        return
    try:
        other = urllib3_parse(url)
    except Exception:  # urllib3 refuses what it cannot read: so must we
        raise ambiguous from None
    other_host = (other.host or "").strip("[]").lower()
    if other_host != host.strip("[]").lower() or (other.port or None) != parts.port:
        raise ambiguous


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
