"""Each service's documented URL shape, checked when a channel is configured.

A Slack URL missing a segment, a Discord URL with a non-numeric id or a misspelt host
(``hooks.slak.com``) would otherwise show ``ready`` and fail at the first real message,
maybe hours into a run. What is certainly wrong is refused with a
:class:`~afs_callbacks.exceptions.ConfigurationError` naming the variable and saying what is
wrong, never showing the secret; an unexpected host where relays or self-hosting are normal
is accepted with one warning, which ``afs-notify status`` shows too (:func:`url_warnings`).
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.urls import is_loopback

log = logging.getLogger("afs_callbacks")

SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
DISCORD_HOSTS = tuple(
    f"{prefix}{domain}" for domain in ("discord.com", "discordapp.com") for prefix in ("", "ptb.", "canary.")
)
TEAMS_HOST_SUFFIXES = (".logic.azure.com", ".powerplatform.com", ".powerautomate.com")
#: Hosts of the services we know, for "did you mean" on a misspelt one.
KNOWN_HOSTS = (
    *SLACK_HOSTS,
    *DISCORD_HOSTS,
    "api.telegram.org",
    "ntfy.sh",
    "events.pagerduty.com",
    "events.eu.pagerduty.com",
    "api.twilio.com",
)

_SLACK_PATH = re.compile(r"^/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+/?$")
_DISCORD_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(?P<id>[^/]*)/(?P<token>[^/]*)/?$")
_DISCORD_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,}$")

_warnings: dict[str, str] = {}
_lock = threading.Lock()


def url_warnings() -> dict[str, str]:
    """Variable -> warning, for every accepted URL with an unexpected host."""
    with _lock:
        return dict(_warnings)


def _warn(variable: str, text: str) -> None:
    with _lock:
        new = _warnings.get(variable) != text
        _warnings[variable] = text
    if new:
        log.warning("afs-callbacks: %s: %s", variable, text)


def _clear(variable: str) -> None:
    with _lock:
        _warnings.pop(variable, None)


def _host(url: str) -> str:
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
    host = _host(url)
    expected = tuple(expected)
    _clear(variable)
    if host in expected:
        return True
    if host in KNOWN_HOSTS:
        raise ConfigurationError(variable, f"{host!r} is another service's host, not {service}'s")
    guess = near_miss(host, (*expected, *KNOWN_HOSTS))
    if guess is not None:
        raise ConfigurationError(variable, f"the host {host!r} is not {service}'s; did you mean {guess!r}?")
    if not is_loopback(host):
        _warn(variable, f"{host!r} is not {service}'s host ({', '.join(expected)}); fine for a relay")
    return False


def check_self_hosted(url: str, variable: str) -> None:
    """For services people host themselves (ntfy, a webhook, Alertmanager): only a host
    that looks like a misspelling of a known one is worth a warning."""
    host = _host(url)
    _clear(variable)
    guess = None if host in KNOWN_HOSTS else near_miss(host, KNOWN_HOSTS)
    if guess is not None:
        _warn(variable, f"the host {host!r} looks like a misspelling of {guess!r}")


def check_slack_webhook(url: str, variable: str) -> None:
    """A Slack incoming webhook: ``https://hooks.slack.com/services/T…/B…/<secret>``.

    Raises:
        ConfigurationError: a Slack host with another path, or a misspelt host.
    """
    if not check_host(url, variable, SLACK_HOSTS, "Slack"):
        return
    path = urlsplit(url).path
    if _SLACK_PATH.match(path):
        return
    if path.startswith("/services/"):
        found = f"found {len([part for part in path[len('/services/') :].split('/') if part])}"
    else:
        found = "found no /services/"
    raise ConfigurationError(
        variable,
        "is not a Slack incoming-webhook URL: expected https://hooks.slack.com/services/ followed by "
        f"3 parts, T…/B…/<secret> ({found})",
    )


def check_discord_webhook(url: str, variable: str) -> None:
    """A Discord webhook: ``https://discord.com/api/webhooks/<numeric id>/<token>``.

    Raises:
        ConfigurationError: a Discord host with another path, a non-numeric id, a
            malformed token, or a misspelt host.
    """
    if not check_host(url, variable, DISCORD_HOSTS, "Discord"):
        return
    expected = "expected https://discord.com/api/webhooks/<numeric id>/<token>"
    match = _DISCORD_PATH.match(urlsplit(url).path)
    if match is None:
        raise ConfigurationError(variable, f"is not a Discord webhook URL: {expected}")
    if not match.group("id").isdigit():
        raise ConfigurationError(variable, f"the webhook id must be a number ({expected})")
    if not _DISCORD_TOKEN.match(match.group("token")):
        raise ConfigurationError(variable, f"the webhook token is missing or malformed ({expected})")


def check_teams_workflow(url: str, variable: str) -> None:
    """A Teams Workflows webhook: ``https://<...>.logic.azure.com/workflows/<id>/triggers/
    manual/paths/invoke?...&sig=<secret>`` (or the newer ``*.powerplatform.com`` form).

    Raises:
        ConfigurationError: an Azure/Power Platform host without the invoke path or ``sig=``.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    _clear(variable)
    if host.endswith(".webhook.office.com"):
        _warn(
            variable,
            "an Office 365 connector URL: Microsoft retired these; create a Workflows webhook instead",
        )
        return
    if not host.endswith(TEAMS_HOST_SUFFIXES):
        if not is_loopback(host):
            _warn(variable, f"{host!r} is not a Power Automate / Logic Apps host; fine for a relay")
        return
    expected = "expected the Workflows URL .../workflows/<id>/triggers/manual/paths/invoke?...&sig=<secret>"
    if "/workflows/" not in parts.path or not parts.path.rstrip("/").endswith("/invoke"):
        raise ConfigurationError(variable, f"is not a Teams Workflows URL: {expected}")
    if not parse_qs(parts.query).get("sig"):
        raise ConfigurationError(variable, f"has no sig= (its credential): {expected}")
