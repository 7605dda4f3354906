"""Settings from the environment and a ``.env`` file, validated, with secrets kept masked.

The environment wins over the ``.env`` file, so a cluster job can override a laptop's file.
Every getter raises :class:`ConfigurationError` naming the variable and what is wrong; a URL
or secret value is never echoed back in that message.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.redaction import mask_url

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


def _read_env_file(path: Path) -> dict[str, str]:
    # python-dotenv is imported here, not at module level: most imports of the package
    # (a framework callback built with an explicit manager) never read a file.
    from dotenv import dotenv_values

    return {key: value for key, value in dotenv_values(path).items() if value is not None}


class Env(Mapping[str, str]):
    """A read-only view of settings: ``os.environ`` over the values of a ``.env`` file.

    Args:
        environ: the variables to read (default ``os.environ``).
        env_file: a ``.env`` file whose values apply where ``environ`` has none. Default:
            ``AFS_ENV_FILE`` if set, else ``./.env`` when it exists. ``False`` reads no file.

    Raises:
        ConfigurationError: ``env_file`` was named but does not exist.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        base = dict(os.environ if environ is None else environ)
        values: dict[str, str] = {}
        path = self._env_file_path(base, env_file)
        if path is not None:
            values.update(_read_env_file(path))
        values.update(base)
        self._values = values
        self.env_file = path

    @staticmethod
    def _env_file_path(
        base: Mapping[str, str], env_file: str | os.PathLike[str] | bool | None
    ) -> Path | None:
        if env_file is False:
            return None
        if env_file is None or env_file is True:
            named = base.get("AFS_ENV_FILE")
            if named:
                path = Path(named).expanduser()
                if not path.is_file():
                    raise ConfigurationError("AFS_ENV_FILE", f"no such file: {path}")
                return path
            default = Path.cwd() / ".env"
            return default if default.is_file() else None
        path = Path(env_file).expanduser()
        if not path.is_file():
            raise ConfigurationError("--env-file", f"no such file: {path}")
        return path

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        # Never print values: most of what an Env holds for us is secret.
        return f"Env({len(self._values)} variables, env_file={str(self.env_file)!r})"

    # Typed getters -------------------------------------------------------------------

    def text(self, name: str, default: str | None = None) -> str | None:
        """The stripped value, or ``default`` when unset or blank."""
        value = self._values.get(name)
        if value is None or not value.strip():
            return default
        return value.strip()

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean: 1/true/yes/on or 0/false/no/off."""
        value = self._values.get(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(name, f"must be true or false, got {value!r}")

    def number(
        self,
        name: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        """A number within ``[minimum, maximum]``."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigurationError(name, f"must be a number, got {value!r}") from None
        if number != number:
            raise ConfigurationError(name, "must be a number, got NaN")
        if minimum is not None and number < minimum:
            raise ConfigurationError(name, f"must be at least {minimum:g}, got {value}")
        if maximum is not None and number > maximum:
            raise ConfigurationError(name, f"must be at most {maximum:g}, got {value}")
        return number

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        """A whole number within ``[minimum, maximum]``."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigurationError(name, f"must be a whole number, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigurationError(name, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigurationError(name, f"must be at most {maximum}, got {number}")
        return number

    def port(self, name: str, default: int | None = None) -> int | None:
        """A TCP port 1-65535."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not 1 <= number <= 65535:
            raise ConfigurationError(name, f"must be a port number 1-65535, got {value!r}")
        return number

    def items_list(self, name: str) -> list[str]:
        """A comma-separated list, blanks dropped."""
        value = self.text(name)
        if value is None:
            return []
        return [item.strip() for item in value.split(",") if item.strip()]

    def level(self, name: str, default: NotificationLevel | None = None) -> NotificationLevel | None:
        """A level name (info, success, warning, error, critical)."""
        value = self.text(name)
        if value is None:
            return default
        try:
            return NotificationLevel.parse(value)
        except ValueError as error:
            raise ConfigurationError(name, str(error)) from None

    def event_types(self, name: str) -> frozenset[EventType] | None:
        """A comma-separated list of event types, or None when unset (meaning: all)."""
        names = self.items_list(name)
        if not names:
            return None
        try:
            return frozenset(EventType.parse(item) for item in names)
        except ValueError as error:
            raise ConfigurationError(name, str(error)) from None

    def url(self, name: str, *, secret: bool = True) -> str | None:
        """A URL, checked by :func:`validate_url` (plain http only for loopback or opt-in)."""
        value = self.text(name)
        if value is None:
            return None
        return validate_url(value, name, allow_http=self.flag("AFS_ALLOW_HTTP"), secret=secret)


def validate_url(url: str, variable: str, *, allow_http: bool = False, secret: bool = True) -> str:
    """Check that ``url`` is an absolute http(s) URL; plain http only for loopback or opt-in.

    Plain http would send a webhook's secret path over the network in clear text, so it
    needs ``AFS_ALLOW_HTTP=1`` unless the host is loopback (a local relay, a test server).

    Raises:
        ConfigurationError: naming ``variable``; the URL is shown masked when ``secret``.
    """
    shown = mask_url(url) if secret else url
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ConfigurationError(variable, f"is not a valid URL ({error}): {shown}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(variable, f"must be an http(s) URL with a host, got {shown}")
    if parts.scheme == "http" and not allow_http and not is_loopback(host):
        raise ConfigurationError(
            variable,
            f"plain http to a remote host would expose the secret in it ({shown}); "
            "use https, or set AFS_ALLOW_HTTP=1 to allow it",
        )
    return url


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``AFS_STATE_DIR``, else ``$XDG_STATE_HOME/afs-callbacks`` (``~/.local/state/...``)."""
    env = os.environ if env is None else env
    named = env.get("AFS_STATE_DIR")
    if named:
        return Path(named).expanduser()
    xdg = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser() / "afs-callbacks"


@dataclass(frozen=True)
class Settings:
    """Options of the core (not of any one channel). Every field has an ``AFS_`` variable.

    Attributes:
        state_dir: where the outbox/history database lives (``AFS_STATE_DIR``).
        strict: raise configuration errors instead of logging them (``AFS_STRICT``).
        dedup_window: seconds during which repeats of an event collapse (``AFS_DEDUP_WINDOW``).
        max_attempts: delivery attempts before a message is dead (``AFS_MAX_ATTEMPTS``).
        retry_base: first backoff step in seconds (``AFS_RETRY_BASE``).
        retry_cap: longest backoff in seconds (``AFS_RETRY_CAP``).
        max_retry_after: longest server-requested wait honoured (``AFS_MAX_RETRY_AFTER``).
        exit_flush_timeout: seconds spent delivering at exit/close (``AFS_EXIT_FLUSH_TIMEOUT``).
        retention_days: history kept this long (``AFS_HISTORY_DAYS``).
        max_history: at most this many events kept (``AFS_HISTORY_MAX_EVENTS``).
        console: ``auto`` (only when no channel is configured), ``always`` or ``never``
            (``AFS_CONSOLE``).
        send_timeout: connect/read timeout for each network call (``AFS_SEND_TIMEOUT``).
        allow_http: allow plain ``http://`` to non-loopback hosts (``AFS_ALLOW_HTTP``).
        enabled: master switch; False sends nothing, starts no monitor and writes no file
            (``AFS_ENABLED``).
        verbosity: ``quiet``, ``normal`` or ``verbose``: which run events are pushed
            (``AFS_VERBOSITY``; ``<CHANNEL>_EVENTS`` still wins per channel).
        max_age: seconds a message keeps being retried after transient failures before it
            is dead (``AFS_MAX_AGE``, default a day).
        card: keep one live run card per run on channels that can edit messages
            (``AFS_CARD``; ``<CHANNEL>_CARD`` per channel).
        card_interval: seconds between two edits of one card (``AFS_CARD_INTERVAL``).
    """

    state_dir: Path
    strict: bool = False
    dedup_window: float = 60.0
    max_attempts: int = 8
    retry_base: float = 2.0
    retry_cap: float = 300.0
    max_retry_after: float = 900.0
    exit_flush_timeout: float = 5.0
    retention_days: float = 30.0
    max_history: int = 10_000
    console: str = "auto"
    send_timeout: float = 10.0
    allow_http: bool = False
    enabled: bool = True
    verbosity: str = "normal"
    max_age: float = 86400.0
    card: bool = True
    card_interval: float = 30.0

    @classmethod
    def from_env(
        cls,
        env: Env | None = None,
        *,
        on_error: Callable[[ConfigurationError], None] | None = None,
    ) -> Settings:
        """Read every ``AFS_`` option from ``env`` (default: the process environment).

        Args:
            env: the settings to read.
            on_error: called with each bad value, which then keeps its default (how a
                training process goes on). Without it, the first bad value raises.

        Raises:
            ConfigurationError: a bad value, when ``on_error`` is not given.
        """
        env = Env() if env is None else env

        def read(getter: Callable[[], _T], default: _T) -> _T:
            if on_error is None:
                return getter()
            try:
                return getter()
            except ConfigurationError as error:
                on_error(error)
                return default

        return cls(
            state_dir=default_state_dir(env),
            strict=read(lambda: env.flag("AFS_STRICT"), False),
            dedup_window=read(lambda: _num(env, "AFS_DEDUP_WINDOW", 60.0, 0.0), 60.0),
            max_attempts=read(lambda: _int(env, "AFS_MAX_ATTEMPTS", 8, 1), 8),
            retry_base=read(lambda: _num(env, "AFS_RETRY_BASE", 2.0, 0.0), 2.0),
            retry_cap=read(lambda: _num(env, "AFS_RETRY_CAP", 300.0, 0.0), 300.0),
            max_retry_after=read(lambda: _num(env, "AFS_MAX_RETRY_AFTER", 900.0, 0.0), 900.0),
            exit_flush_timeout=read(lambda: _num(env, "AFS_EXIT_FLUSH_TIMEOUT", 5.0, 0.0), 5.0),
            retention_days=read(lambda: _num(env, "AFS_HISTORY_DAYS", 30.0, 0.0), 30.0),
            max_history=read(lambda: _int(env, "AFS_HISTORY_MAX_EVENTS", 10_000, 1), 10_000),
            console=read(lambda: _console(env), "auto"),
            send_timeout=read(lambda: _num(env, "AFS_SEND_TIMEOUT", 10.0, 0.1), 10.0),
            allow_http=read(lambda: env.flag("AFS_ALLOW_HTTP"), False),
            enabled=read(lambda: env.flag("AFS_ENABLED", True), True),
            verbosity=read(lambda: _verbosity(env), "normal"),
            max_age=read(lambda: _num(env, "AFS_MAX_AGE", 86400.0, 1.0), 86400.0),
            card=read(lambda: env.flag("AFS_CARD", True), True),
            card_interval=read(lambda: _num(env, "AFS_CARD_INTERVAL", 30.0, 0.0), 30.0),
        )


_T = TypeVar("_T")


def _num(env: Env, name: str, default: float, minimum: float) -> float:
    value = env.number(name, default, minimum=minimum)
    return default if value is None else value


def _int(env: Env, name: str, default: int, minimum: int) -> int:
    value = env.integer(name, default, minimum=minimum)
    return default if value is None else value


def _console(env: Env) -> str:
    console = (env.text("AFS_CONSOLE", "auto") or "auto").lower()
    if console not in ("auto", "always", "never"):
        raise ConfigurationError("AFS_CONSOLE", f"must be auto, always or never, got {console!r}")
    return console


VERBOSITIES = ("quiet", "normal", "verbose")


def _verbosity(env: Env) -> str:
    value = (env.text("AFS_VERBOSITY", "normal") or "normal").strip().lower()
    if value not in VERBOSITIES:
        raise ConfigurationError("AFS_VERBOSITY", f"must be quiet, normal or verbose, got {value!r}")
    return value
