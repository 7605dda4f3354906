"""Keeping secrets out of logs, exceptions, the history database and CLI output.

Secrets here are webhook URLs, bot tokens, routing keys and passwords. Channels register
theirs when they are built; :func:`redact` then masks every registered secret and anything
that looks like one (URL credentials, known webhook paths, ``sig=``/``token=`` parameters)
in any text before it is logged or stored. Third-party exception text (``requests`` puts the
whole URL in it) always goes through :func:`redact` first.

A service's error answer may echo what it was sent, in its own encoding: JSON with ``\\/``
for ``/``, percent-encoding, HTML entities, or only the bare token. So each secret is
registered with its parts (a URL's path tokens, ``sig=``, password; a Bearer value) and
matched with every character in any of those encodings; and a text is redacted whole before
anything cuts it, so no half of a secret survives a truncation.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

MASK = "***"

_lock = threading.Lock()
#: Every registered secret and part of one -> (its anchor, its pattern in every encoding).
_secrets: dict[str, tuple[str, re.Pattern[str]]] = {}
_ordered: list[tuple[str, re.Pattern[str]]] = []
# Any anchor at all (one search for the common case: a text that holds no secret).
_NOTHING = re.compile(r"(?!)")
_any_anchor: list[re.Pattern[str]] = [_NOTHING]

# A part of a secret URL shorter than this is left alone (``api``, ``v2``, ``hooks``).
_MIN_PART = 8
# Query parameters whose values are credentials whatever their length.
_SECRET_KEYS = frozenset(
    {
        "sig",
        "signature",
        "token",
        "key",
        "apikey",
        "api_key",
        "access_token",
        "code",
        "secret",
        "password",
        "auth",
    }
)


@dataclass(frozen=True)
class SecretPattern:
    """A shape of secret to mask in any text, registered or not (a Slack webhook's path).

    Args:
        word: a substring the text must hold for the pattern to be tried at all (most
            texts skip every regex); empty: always tried.
        pattern: what to find. Match the JSON-escaped (``\\/``) and percent-encoded
            (``%2F``) forms of ``/`` too (:data:`DELIMITER`): echoes use them.
        replacement: what a match becomes (``\\1***`` keeps the first group).

    A channel declares its service's patterns as ``secret_patterns`` on its class; they
    apply from the moment the class exists (:func:`register_pattern`).
    """

    word: str
    pattern: re.Pattern[str]
    replacement: str


#: A ``/`` as it may appear in an echo: plain, JSON-escaped or percent-encoded.
DELIMITER = r"(?:/|\\/|%2[Ff])"
_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]{0,31}:(?:/|\\/){2}"

# Patterns for secrets we were never told about that no one service owns; each service's
# own shapes (a Slack webhook path, a Telegram /bot<token>) come from its channel class.
# user:password@host in any URL (first: a service pattern must not eat the host first).
# (the scheme's length is bounded: unbounded, a long run of letters costs quadratic time)
_LEADING = (
    SecretPattern("@", re.compile(rf"(?P<scheme>{_SCHEME})[^/\\\s:@]+:[^/\\\s@]+@"), r"\g<scheme>***@"),
)
_TRAILING = (
    # Signatures and tokens in query strings (Teams Workflows `sig=`, `token=`, ...)
    SecretPattern(
        "",
        re.compile(
            r"((?:[?&]|&amp;|%26)(?:sig|signature|token|key|apikey|api_key|access_token|code)(?:=|%3[Dd]))"
            r"[^&\s\"'<>\\]+",
            re.I,
        ),
        r"\1" + MASK,
    ),
    # Authorization headers echoed into text
    SecretPattern("", re.compile(r"((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
)
#: Every pattern :func:`redact` applies, in order; replaced whole (readers take no lock).
_patterns: tuple[SecretPattern, ...] = (*_LEADING, *_TRAILING)
# What a refused URL shows of its secret parts (afs_callbacks.urls.url_shape): "…", or one
# letter and "…", per path segment or query value. A shape pattern leaves such a part as it
# is (it holds no secret, and masking it would hide what was wrong with the URL).
_URL_SHAPE = re.compile(r"(?:[^\s/…]?…/?)+[,.;:)]*")


def _keeping_url_shapes(replacement: str) -> Callable[[re.Match[str]], str]:
    kept_group = replacement.startswith("\\1")

    def replace(match: re.Match[str]) -> str:
        secret = match.group(0)[len(match.group(1)) :] if kept_group else match.group(0)
        return match.group(0) if _URL_SHAPE.fullmatch(secret) else match.expand(replacement)

    return replace


def _compiled(patterns: Iterable[SecretPattern]) -> tuple[tuple[str, re.Pattern[str], Any], ...]:
    # Plain tuples: the loop in redact() runs for every logged line.
    return tuple((p.word, p.pattern, _keeping_url_shapes(p.replacement)) for p in patterns)


_shapes = _compiled(_patterns)


def register_pattern(*patterns: SecretPattern) -> None:
    """Mask text of these shapes from now on, registered as a secret or not.

    Service patterns go between the ``user:password@`` one and the query/Authorization
    ones, in the order they come; a pattern registered twice counts once.
    """
    global _patterns, _shapes
    with _lock:
        services = [p for p in _patterns if p not in _LEADING and p not in _TRAILING]
        services += [p for p in patterns if p not in services]
        _patterns = (*_LEADING, *services, *_TRAILING)
        _shapes = _compiled(_patterns)


def register_secret(*values: str | None) -> None:
    """Remember secrets so that :func:`redact` masks them wherever they appear.

    A channel registers each of its secrets with the parts of it that its service can
    echo on their own, where this function cannot know them (a bot token's half after
    ``123456789:``, a ``whsec_`` key's base64, a login's :func:`basic_credentials`).

    Values shorter than 4 characters are ignored: masking them would garble ordinary text.
    The parts of a secret that can come back on their own are remembered too: a URL's
    path-and-query, query, password and token-like path segments and query values (an
    answer or ``requests`` error text may show only those), the value of a ``Bearer`` or
    ``Basic`` credential. Each is then masked in every encoding an echo can use: as is,
    JSON-escaped (``\\/``, ``\\u0026``), percent-encoded, or as HTML entities.
    """
    added = False
    for value in values:
        if not value or len(value) < 4:
            continue
        for part in {value, *_parts(value)}:
            with _lock:
                if part in _secrets:
                    continue
                _secrets[part] = (_anchor(part), _encoded_pattern(part))
                added = True
    if added:
        with _lock:
            # Longest first, so a URL is masked whole before a token inside it.
            _ordered[:] = [_secrets[key] for key in sorted(_secrets, key=len, reverse=True)]
            anchors = sorted({anchor for anchor, _ in _ordered}, key=len, reverse=True)
            # An empty anchor (a secret of punctuation only) must always be looked for.
            _any_anchor[0] = re.compile("|".join(map(re.escape, anchors))) if all(anchors) else re.compile("")


def _parts(value: str) -> set[str]:
    """The pieces of ``value`` that are secret on their own (see :func:`register_secret`)."""
    # Credentials proper (a password, a bearer value) count from 4 characters; other
    # pieces of a URL only from 8, so that ``/hook`` or ``/v2`` is not masked everywhere.
    strong: set[str] = set()
    parts: set[str] = set()
    credential = re.match(r"^(?:Bearer|Basic|Token)\s+(\S{4,})$", value.strip(), re.I)
    if credential:
        strong.add(credential.group(1))
        strong |= _basic_password(credential.group(1))
    strong.add(unquote(value))
    match = _URL.match(value)
    if match is not None:
        path, query = match.group("path") or "", match.group("query") or ""
        parts |= {path + query, query[1:]} if query else {path}
        userinfo = match.group("userinfo") or ""
        if ":" in userinfo:
            user, _, password = userinfo.partition(":")
            strong |= {password, unquote(password)}
            # requests sends URL credentials as Basic auth: an echo of the header shows them so.
            strong |= set(basic_credentials(unquote(user), unquote(password)))
        parts |= {segment for segment in path.split("/") if _looks_secret(segment)}
        for key, item in parse_qsl(query[1:], keep_blank_values=False):
            if key.lower() in _SECRET_KEYS or _looks_secret(item):
                strong |= {item, quote(item, safe="")}
    return {part for part in strong if len(part) >= 4} | {part for part in parts if len(part) >= _MIN_PART}


def basic_credentials(user: str | None, password: str) -> tuple[str, ...]:
    """The forms a login travels in, base64-encoded, that an echo can show bare: HTTP
    Basic (``user:password``), SMTP ``AUTH PLAIN`` (``\\0user\\0password``) and the
    password line of ``AUTH LOGIN``. Register them with the password."""
    user = user or ""
    forms = (f"{user}:{password}", f"\0{user}\0{password}", password)
    return tuple(base64.b64encode(form.encode("utf-8")).decode("ascii") for form in forms)


def _looks_secret(segment: str) -> bool:
    """A path segment or query value that is a token rather than a word (``services``)."""
    if len(segment) < _MIN_PART:
        return False
    return len(segment) >= 16 or any(ch.isdigit() for ch in segment) or segment != segment.lower()


def _basic_password(value: str) -> set[str]:
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return set()
    _, sep, password = text.partition(":")
    return {text, password} if sep and len(password) >= 4 else set()


_URL = re.compile(
    r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:(?P<userinfo>[^/?#@\s]*)@)?[^/?#\s@]+"
    r"(?P<path>/[^?#\s]*)?(?P<query>\?[^#\s]*)?"
)
# Characters no encoding changes: the anchor that tells cheaply whether a text may hold it.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]+")
_ENTITIES = {"&": ("&amp;",), "<": ("&lt;",), ">": ("&gt;",), '"': ("&quot;",), "'": ("&apos;",)}


def _anchor(secret: str) -> str:
    runs = _PLAIN.findall(secret)
    return max(runs, key=len) if runs else ""


def _encoded_pattern(secret: str) -> re.Pattern[str]:
    """A pattern matching ``secret`` with any of its characters in any common encoding."""
    return re.compile("".join(_char_pattern(ch) for ch in secret))


def _char_pattern(ch: str) -> str:
    if _PLAIN.fullmatch(ch):
        return re.escape(ch)
    forms = [re.escape(ch), "".join(_hex_byte(byte) for byte in ch.encode("utf-8"))]
    code = ord(ch)
    # JSON escapes: one backslash, or more where an echo was escaped twice (a service
    # quoting the request's JSON inside a JSON string of its own).
    forms.append(rf"\\+u{_hex_text(f'{code:04x}')}" if code < 0x10000 else re.escape(json.dumps(ch)[1:-1]))
    forms += [f"&#0*{code};", f"&#[xX]0*{_hex_text(f'{code:x}')};"]
    forms += [re.escape(entity) for entity in _ENTITIES.get(ch, ())]
    if ch in '/"\\':
        forms.append(r"\\+" + re.escape(ch))  # JSON escapes these with a backslash
    if ch == " ":
        forms.append(r"\+")  # form encoding
    return "(?:" + "|".join(forms) + ")"


def _hex_byte(byte: int) -> str:
    return "%" + _hex_text(f"{byte:02x}")


def _hex_text(digits: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in digits)


def redact(text: object) -> str:
    """Return ``text`` as a string with every known and likely secret replaced by ``***``."""
    result = str(text)
    with _lock:
        known = list(_ordered) if _any_anchor[0].search(result) else []
    for anchor, pattern in known:
        # The anchor is a substring search in C: only texts that may hold it pay for the regex.
        if anchor in result or not anchor:
            result = pattern.sub(MASK, result)
    for word, pattern, replacement in _shapes:
        if word in result:
            result = pattern.sub(replacement, result)
    return result


def mask(secret: str | None, *, keep: int = 4) -> str:
    """Show a secret as its last few characters only: ``mask("abcd1234") == "***1234"``.

    Short secrets are masked whole, so the shown part never gives most of it away.
    """
    if not secret:
        return ""
    if len(secret) <= keep * 3:
        return MASK
    return MASK + secret[-keep:]


def mask_url(url: str | None) -> str:
    """Show a URL with its scheme and host only: ``https://hooks.slack.com/***``.

    Every part after the host can be a secret (Slack, Discord, Telegram, Teams all keep
    theirs in the path or query).
    """
    if not url:
        return ""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/@\s]*@)?([^/?#@\s]+)(?=[/?#]|$)", url)
    if not match:
        return MASK
    return f"{match.group(1)}{match.group(2)}/{MASK}"


def registered_secrets() -> Iterable[str]:
    """The secrets registered so far (for tests that check nothing leaked)."""
    with _lock:
        return tuple(_secrets)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not kill logging
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, so handlers do not print the raw one.
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger) -> None:
    """Attach :class:`RedactingFilter` to ``logger`` once, and quiet urllib3's URL logging."""
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    # urllib3 logs full request paths at DEBUG; paths hold webhook tokens.
    urllib3_logger = logging.getLogger("urllib3")
    if urllib3_logger.level < logging.WARNING:
        urllib3_logger.setLevel(logging.WARNING)


def _reset_lock_after_fork() -> None:
    # A thread of the parent may have held the lock at fork(); in the child it never
    # would be released, and every later log line would hang.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)
