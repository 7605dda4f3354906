"""Every environment variable the library reads, and "did you mean" for ones it does not.

A misspelt variable (``SLAK_WEBHOOK_URL``) is otherwise silently ignored: the channel just
stays "not set up". :func:`unknown_variables` finds names that look like ours but are not,
with the likely intended name, for ``afs-notify status``; :func:`warn_unknown_variables`
says the same once per process when a manager reads the environment (a training run).
Channel variables, the names people mistype them as and the prefixes only a channel uses
are each channel's own declarations (``variables``, ``variable_aliases``, ``own_prefixes``
on its class); the core's and the monitors' are listed here.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from afs_callbacks.channels import channel_classes, channel_variables

#: The core's own variables (``Settings`` and how settings are found).
CORE_VARIABLES = (
    "AFS_STATE_DIR",
    "AFS_ENV_FILE",
    "AFS_STRICT",
    "AFS_ENABLED",
    "AFS_ALLOW_HTTP",
    "AFS_SEND_TIMEOUT",
    "AFS_DEDUP_WINDOW",
    "AFS_MAX_ATTEMPTS",
    "AFS_MAX_AGE",
    "AFS_RETRY_BASE",
    "AFS_RETRY_CAP",
    "AFS_MAX_RETRY_AFTER",
    "AFS_EXIT_FLUSH_TIMEOUT",
    "AFS_HISTORY_DAYS",
    "AFS_HISTORY_MAX_EVENTS",
    "AFS_CONSOLE",
    "AFS_VERBOSITY",
    "AFS_CARD",
    "AFS_CARD_INTERVAL",
    "AFS_BURST",
    "AFS_PACE",
    "AFS_PROMETHEUS_TEXTFILE_DIR",
    "AFS_PROMETHEUS_KEEP",
    # Run control (afs_callbacks.control, docs/control.md).
    "AFS_CONTROL",
    "AFS_CONTROL_MAX_AGE",
    "AFS_CONTROL_TELEGRAM_USERS",
    "AFS_CONTROL_SLACK_USERS",
    "SLACK_APP_TOKEN",
    # Rules (afs_callbacks.rules, docs/rules.md).
    "AFS_RULES",
)
#: The monitors' variables and the death watch's.
MONITOR_VARIABLES = (
    "AFS_MONITORS",
    "GPU_MONITOR_INTERVAL",
    "GPU_MEMORY_WARNING_THRESHOLD",
    "GPU_MEMORY_CRITICAL_THRESHOLD",
    "GPU_UTILIZATION_FLOOR",
    "GPU_UTILIZATION_WINDOW",
    "GPU_TEMPERATURE_THRESHOLD",
    "AFS_DISK_FREE_MIN_GB",
    "AFS_DISK_FREE_MIN_FRACTION",
    "AFS_MONITOR_PATHS",
    "AFS_HOST_MEMORY_THRESHOLD",
    "AFS_RSS_MAX_GB",
    "AFS_SYSTEM_MONITOR_INTERVAL",
    "AFS_HOURLY_COST",
    "AFS_GPU_HOURLY_COST",
    "AFS_GPU_COUNT",
    "COST_ALERT_THRESHOLD",
    "AFS_DEATHWATCH_INTERVAL",
    "AFS_DEATHWATCH_GRACE",
)
# Names read under a pattern, and internal ones passed to our own subprocesses.
_PATTERNS = re.compile(r"^(COST_ALERT_THRESHOLD_\d+|AFS_DESKTOP_[A-Z_]+)$")
# Prefixes no other common tool uses besides the channels' own: any unknown name with one
# is worth a question.
_CORE_PREFIXES = ("AFS_",)


def _own_prefixes() -> tuple[str, ...]:
    return (*_CORE_PREFIXES, *(prefix for handler in channel_classes() for prefix in handler.own_prefixes))


def _aliases() -> dict[str, str]:
    """Names people write from other tools' habits -> the variable they mean."""
    return {
        alias: meant for handler in channel_classes() for alias, meant in handler.variable_aliases.items()
    }


@dataclass(frozen=True)
class UnknownVariable:
    """A set variable that looks like one of ours but is not; ``suggestion`` may be None."""

    name: str
    suggestion: str | None

    def __str__(self) -> str:
        if self.suggestion:
            return f"{self.name} is unknown: did you mean {self.suggestion}?"
        return f"{self.name} is unknown: not a variable afs-callbacks reads"


def known_variables() -> tuple[str, ...]:
    """Every variable name the library reads (pattern-named ones aside)."""
    return tuple(dict.fromkeys([*CORE_VARIABLES, *channel_variables(), *MONITOR_VARIABLES]))


def unknown_variables(env: Mapping[str, str], from_file: Iterable[str] = ()) -> list[UnknownVariable]:
    """Names set in ``env`` that look like ours but are not, with the likely intended name.

    A name counts when it is close to a known one (``SLAK_WEBHOOK_URL``), is a known habit
    of other tools (``SMTP_SERVER``), or has a prefix only we use (``AFS_``, ``TWILIO_``).
    Names from the ``.env`` file (``from_file``) also count when they share a channel's
    prefix (``SLACK_HOOK``): that file is for us, while the environment is everyone's.
    """
    known = known_variables()
    known_set = set(known)
    aliases = _aliases()
    own_prefixes = _own_prefixes()
    file_names = set(from_file)
    channel_prefixes = {name.split("_")[0] + "_" for name in known}
    found = []
    for name in sorted(env):
        if name in known_set or _PATTERNS.match(name) or not name.isupper():
            continue
        suggestion = aliases.get(name) or _closest(name, known)
        ours = name.startswith(own_prefixes) or (
            name in file_names and name.startswith(tuple(channel_prefixes))
        )
        if suggestion or ours:
            found.append(UnknownVariable(name, suggestion))
    return found


@functools.lru_cache(maxsize=1024)
def _closest(name: str, known: tuple[str, ...]) -> str | None:
    # Remembered: comparing one name with every known one costs ~150 µs (difflib), and a
    # process reads the same environment again for each manager it builds (a sweep's
    # trials with their own state directory): ~7 ms of a training thread's start each time.
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return close[0] if close else None


_warned: set[str] = set()
_warned_lock = threading.Lock()
log = logging.getLogger("afs_callbacks")


def warn_unknown_variables(
    env: Mapping[str, str], from_file: Iterable[str] = (), *, configured: bool
) -> None:
    """Log the :func:`unknown_variables` of ``env`` in one warning, once per process (the
    same names read again by another manager stay quiet); with no channel ``configured``,
    say where messages go meanwhile."""
    unknown = unknown_variables(env, from_file)
    if not unknown:
        return
    text = "; ".join(str(variable) for variable in unknown)
    with _warned_lock:
        if text in _warned:
            return
        _warned.add(text)
    if configured:
        log.warning("afs-callbacks: %s", text)
    else:
        log.warning("afs-callbacks: %s (no channel is configured: messages go to the console)", text)
