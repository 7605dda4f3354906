"""Keeping secrets out of logs, exceptions, the history database and CLI output.

Secrets here are webhook URLs, bot tokens, routing keys and passwords. Channels register
theirs when they are built; :func:`redact` then masks every registered secret and anything
that looks like one (URL credentials, known webhook paths, ``sig=``/``token=`` parameters)
in any text before it is logged or stored. Third-party exception text (``requests`` puts the
whole URL in it) always goes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()

# Patterns for secrets we were never told about (a URL typed into a CLI flag, say).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # user:password@host in any URL
    # (the scheme's length is bounded: unbounded, a long run of letters costs quadratic time)
    (re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)[^/\s:@]+:[^/\s@]+@"), r"\g<scheme>***@"),
    # Slack incoming webhooks: /services/T000/B000/XXXX (also the bare path, which is all
    # that requests' "Max retries exceeded with url: ..." shows)
    (re.compile(r"(hooks\.slack\.com/services/)[^\s\"'<>]+"), r"\1" + MASK),
    (re.compile(r"(/services/)T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+"), r"\1" + MASK),
    # Discord webhooks: /api/webhooks/{id}/{token}
    (re.compile(r"(/api/webhooks/)[^\s\"'<>]+"), r"\1" + MASK),
    # Telegram: /bot<token>/method
    (re.compile(r"(/bot)\d+:[A-Za-z0-9_-]+"), r"\1" + MASK),
    # Signatures and tokens in query strings (Teams Workflows `sig=`, `token=`, ...)
    (
        re.compile(r"([?&](?:sig|signature|token|key|apikey|api_key|access_token|code)=)[^&\s\"'<>]+", re.I),
        r"\1" + MASK,
    ),
    # Authorization headers echoed into text
    (re.compile(r"((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
)


def register_secret(*values: str | None) -> None:
    """Remember secrets so that :func:`redact` masks them wherever they appear.

    Values shorter than 4 characters are ignored: masking them would garble ordinary text.
    For a URL, its path-and-query and its query are remembered too (when 8 characters or
    longer): ``requests`` error text shows ``url: /path?query`` without scheme and host.
    """
    with _lock:
        for value in values:
            if value and len(value) >= 4:
                _secrets.add(value)
                _secrets.update(part for part in _url_parts(value) if len(part) >= 8)


def _url_parts(value: str) -> tuple[str, ...]:
    match = _URL.match(value)
    if match is None:
        return ()
    path, query = match.group("path") or "", match.group("query") or ""
    return (path + query, query[1:]) if query else (path,)


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s]+(?P<path>/[^?#\s]*)?(?P<query>\?[^#\s]*)?")


def redact(text: object) -> str:
    """Return ``text`` as a string with every known and likely secret replaced by ``***``."""
    result = str(text)
    with _lock:
        # Longest first, so a URL is masked whole before a token inside it.
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in result:
            result = result.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
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
