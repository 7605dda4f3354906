"""Which host a channel's URL names: the service's own, a misspelling of a known one, or a relay.

A misspelt host (``hooks.slak.com``) would otherwise show ``ready`` and fail at the first
real message, maybe hours into a run. Each service's URL shape is checked in its own
module (:func:`check_host` first); what is shared lives here: a host that looks like a
misspelling of any service's host (each channel declares its ``hosts``) is refused with a
:class:`~afs_callbacks.exceptions.ConfigurationError` naming the variable, never showing
the secret; an unexpected host where relays or self-hosting are normal is accepted with
one warning, which ``afs-notify status`` shows too (:func:`url_warnings`).
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

from afs_callbacks.channels import channel_classes
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.urls import is_loopback

log = logging.getLogger("afs_callbacks")

_warnings: dict[str, str] = {}
_lock = threading.Lock()


def known_hosts() -> tuple[str, ...]:
    """Every channel's declared hosts, for "did you mean" on a misspelt one."""
    return tuple(dict.fromkeys(host for handler in channel_classes() for host in handler.hosts))


def url_warnings() -> dict[str, str]:
    """Variable -> warning, for every accepted URL with an unexpected host."""
    with _lock:
        return dict(_warnings)


def add_warning(variable: str, text: str) -> None:
    """Keep ``text`` as the warning about ``variable``'s URL; log it once."""
    with _lock:
        new = _warnings.get(variable) != text
        _warnings[variable] = text
    if new:
        log.warning("afs-callbacks: %s: %s", variable, text)


def clear_warning(variable: str) -> None:
    """Forget the warning about ``variable`` (its URL is being checked again)."""
    with _lock:
        _warnings.pop(variable, None)


def host_of(url: str) -> str:
    """The URL's host in lower case ("" when it has none)."""
    return (urlsplit(url).hostname or "").lower()


def near_miss(host: str, hosts: Iterable[str]) -> str | None:
    """The known host that ``host`` looks like a misspelling of, if any."""
    candidates = [known for known in hosts if known != host]
    close = difflib.get_close_matches(host, candidates, n=1, cutoff=0.8)
    return close[0] if close else None


def check_host(url: str, variable: str, expected: Iterable[str], service: str) -> bool:
    """True when ``url``'s host is one of ``expected``. A misspelling of a known host is
    refused; loopback passes quietly (tests, local relays); any other host is accepted with
    a warning (a relay).

    Raises:
        ConfigurationError: the host looks like a misspelt service host.
    """
    host = host_of(url)
    expected = tuple(expected)
    clear_warning(variable)
    if host in expected:
        return True
    known = known_hosts()
    if host in known:
        raise ConfigurationError(variable, f"{host!r} is another service's host, not {service}'s")
    guess = near_miss(host, (*expected, *known))
    if guess is not None:
        raise ConfigurationError(variable, f"the host {host!r} is not {service}'s; did you mean {guess!r}?")
    if not is_loopback(host):
        add_warning(variable, f"{host!r} is not {service}'s host ({', '.join(expected)}); fine for a relay")
    return False


def check_self_hosted(url: str, variable: str) -> None:
    """For services people host themselves (ntfy, a webhook, Alertmanager): only a host
    that looks like a misspelling of a known one is worth a warning."""
    host = host_of(url)
    clear_warning(variable)
    known = known_hosts()
    guess = None if host in known else near_miss(host, known)
    if guess is not None:
        add_warning(variable, f"the host {host!r} looks like a misspelling of {guess!r}")
