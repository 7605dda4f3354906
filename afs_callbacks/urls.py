"""One parse of a destination URL that serves both the safety check and the sender.

An HTTP client and ``urllib.parse`` can read the same text as two different hosts
(``http://example.com\\@127.0.0.1/hook``: the check sees the loopback address, ``requests``
connects to example.com). :func:`validate_url` therefore refuses every URL that the two
parsers do not read the same way (backslashes, spaces, control characters, a second ``@``,
odd host characters) and returns the URL rebuilt from the one parse it checked, which is
what the channel then sends to.

A refused URL is shown by its non-secret parts only (:func:`url_shape`): the scheme, the
host and port, the path's shape (``/services/T…/B…/…``: the words of common webhook paths
and the first letter of Slack-style ids; every other part is ``…``), the query's keys. The
message says what is wrong and what was expected, e.g. ``has no https:// in front: got
hooks.slack.com/services/T…/B…/…, expected https://hooks.slack.com/services/T…/B…/…``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from afs_callbacks.exceptions import ConfigurationError

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
        ConfigurationError: naming ``variable``, what is wrong and what was expected; the
            URL is shown by its shape when ``secret`` (:func:`url_shape`), else whole.
    """
    shown = url_shape(url) if secret else url
    wrapped = _wrapping(url)
    if wrapped:
        text = url.strip()
        inner = text[1:-1].strip()
        inner_shown = url_shape(inner) if secret else inner
        raise ConfigurationError(
            variable,
            f"is wrapped in {wrapped}: got {text[0]}{inner_shown}{text[-1]}, expected {inner_shown}"
            " (remove them)",
        )
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
        raise ConfigurationError(variable, f"is not a valid URL ({error}): got {shown}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(variable, _not_http(url, parts, shown, secret))
    _check_unambiguous(url, parts, variable, shown)
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise ConfigurationError(
            variable,
            f"plain http to a remote host would expose the secret in it ({shown}); "
            "use https, or set AFS_ALLOW_HTTP=1 to allow it",
        )
    return parts


def _wrapping(url: str) -> str:
    """``"quotes"`` or ``"angle brackets"`` when the whole value is wrapped in them (a copy
    from Slack's UI or a shell line pasted into ``.env``), else ``""``."""
    text = url.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return "quotes"
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        return "angle brackets"
    return ""


# A host as people write one: a dotted name or address (a port may follow), or localhost.
_HOST_AHEAD = r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::\d{1,5})?(?:[/?#]|$)"


def _not_http(url: str, parts: SplitResult, shown: str, secret: bool) -> str:
    """What is wrong with a URL that is not ``http(s)://host/...``, and what was expected."""
    text = url.strip()
    colonless = re.match(rf"^(https?)/+(?={_HOST_AHEAD})", text, re.I)
    if colonless:  # https//host/...: the colon was lost
        scheme = colonless.group(1).lower()
        expected = _shape(f"{scheme}://{text[colonless.end() :]}", secret)
        got = text[: colonless.end()] + expected[len(scheme) + 3 :]
        return f"needs a colon after {scheme}: got {got}, expected {expected}"
    host_first = re.match(r"^([A-Za-z0-9.-]+)(?::\d{1,5})?(?:[/?#]|$)", text)
    if "://" not in text and host_first and not text.lower().startswith(("http:", "https:")):
        scheme = "http" if is_loopback(host_first.group(1)) else "https"
        return f"has no {scheme}:// in front: got {shown}, expected {_shape(f'{scheme}://{text}', secret)}"
    after = text.split(":", 1)[1].lstrip("/") if ":" in text else ""
    if parts.scheme in ("http", "https"):
        if re.match(rf"^{_HOST_AHEAD}", after):
            expected = _shape(f"{parts.scheme}://{after}", secret)
            return f"needs two slashes after {parts.scheme}: got {shown}, expected {expected}"
        return f"has no host after {parts.scheme}:// (got {shown}); expected {parts.scheme}://host/path"
    close = difflib.get_close_matches(parts.scheme, ("https", "http"), n=1, cutoff=0.75)
    if close and re.match(rf"^{_HOST_AHEAD}", after):  # htps://, htttps://
        expected = _shape(f"{close[0]}://{after}", secret)
        return f"misspells {close[0]} as {parts.scheme!r}: got {shown}, expected {expected}"
    return f"must start with https:// (or http:// to a loopback host), got {shown}"


def _shape(url: str, secret: bool) -> str:
    return url_shape(url) if secret else url


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


#: Path segments of common webhook and API paths, shown as they are in a refused URL (they
#: say which kind of URL it is and are nobody's secret); every other segment is masked.
PATH_WORDS = frozenset(
    {
        "alerts",
        "api",
        "bot",
        "enqueue",
        "events",
        "hook",
        "hooks",
        "incomingwebhook",
        "invoke",
        "manual",
        "message",
        "messages",
        "notify",
        "paths",
        "send",
        "services",
        "slack",
        "triggers",
        "v1",
        "v2",
        "v3",
        "webhook",
        "webhookb2",
        "webhooks",
        "workflows",
    }
)
# A Slack id (T0123ABCD for a workspace, B0456EFGH for a webhook): its first letter says
# which part is which, and the ids themselves are not the secret (the last part is).
_ID = re.compile(r"^[TBCGUW](?=[A-Z0-9]*[0-9])[A-Z0-9]{6,14}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$")
ELLIPSIS = "…"


def url_shape(url: str) -> str:
    """The parts of ``url`` that are no secret: ``https://hooks.slack.com/services/T…/B…/…``.

    Scheme, host and port as written; user info masked; each path segment shown when it is
    a common word of webhook paths (:data:`PATH_WORDS`), as its first letter for a
    Slack-style id, else as ``…``; query keys with their values masked; a fragment masked.
    """
    text = url.strip()
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)(.*)$", text, re.S)
    scheme = ""
    rest = text
    if match and (match.group(2) or match.group(1).lower() in ("http", "https")):
        scheme, rest = f"{match.group(1)}:{match.group(2)}", match.group(3)
    authority = re.split(r"(?=[/?#])", rest, maxsplit=1)[0]
    remainder = rest[len(authority) :]
    if "@" in authority:
        authority = ELLIPSIS + "@" + authority.rsplit("@", 1)[1]
    host = authority.rsplit("@", 1)[-1]
    if host and not _HOST_PORT.match(host):
        authority = authority[: len(authority) - len(host)] + ELLIPSIS
    path, _, fragment = remainder.partition("#")
    path, query_mark, query = path.partition("?")
    shown_path = "/".join(_segment(segment) for segment in path.split("/"))
    shown = scheme + authority + shown_path
    if query_mark:
        keys = [item.partition("=")[0] for item in query.split("&") if item]
        shown += "?" + "&".join(
            f"{key}={ELLIPSIS}" if re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", key) else ELLIPSIS for key in keys
        )
    if fragment:
        shown += "#" + ELLIPSIS
    return shown


def _segment(segment: str) -> str:
    if not segment or segment.lower() in PATH_WORDS:
        return segment
    if _ID.match(segment):
        return segment[0] + ELLIPSIS
    return ELLIPSIS


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
