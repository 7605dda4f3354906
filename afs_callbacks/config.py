"""Settings from the environment and a ``.env`` file, validated, with secrets kept masked.

:class:`Env` reads ``os.environ`` over a ``.env`` file (the environment wins, so a cluster
job can override a laptop's file) with typed getters; :class:`Settings` holds the core's
options read through it; :func:`read_settings`, :func:`open_env` and
:func:`report_config_error` are the one strict/lenient policy for bad values. Every getter
raises :class:`ConfigurationError` naming the variable and what is wrong; a URL or secret
value is never echoed back in that message.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.redaction import redact

# Re-exported: the URL checks were first written here, and the channels still import them
# from here; their home is afs_callbacks.urls.
from afs_callbacks.urls import is_loopback as is_loopback
from afs_callbacks.urls import validate_url as validate_url

log = logging.getLogger("afs_callbacks")

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
        #: Names set by the ``.env`` file (``afs-notify status`` checks them for misspellings).
        self.file_names = frozenset(values)
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
            raise ConfigurationError("env_file", f"no such file: {path}")
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

    def url(self, name: str, *, secret: bool = True, allow_http: bool | None = None) -> str | None:
        """A URL, checked by :func:`validate_url` (plain http only for loopback or opt-in).

        ``allow_http`` defaults to ``AFS_ALLOW_HTTP``, read leniently: a bad value there is
        the core settings' problem (reported once by :func:`read_settings`), not this URL's.
        """
        value = self.text(name)
        if value is None:
            return None
        if allow_http is None:
            allow_http = channel_settings(self).allow_http
        return validate_url(value, name, allow_http=allow_http, secret=secret)


# The core's options ------------------------------------------------------------------------


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
        burst: ordinary messages a channel sends at once before the pace applies; what is
            held back is folded into one digest (``AFS_BURST``, default 20; 0 turns the
            budget off). The end of a run and alerts never wait for it.
        pace: seconds per ordinary message once the burst is spent (``AFS_PACE``).
        prometheus_textfile_dir: node exporter's textfile folder; when set, each run's
            state is written there as a ``.prom`` file (``AFS_PROMETHEUS_TEXTFILE_DIR``).
        prometheus_keep: seconds an ended or vanished run's series stay exposed
            (``AFS_PROMETHEUS_KEEP``; textfile and ``afs-notify exporter``).
        control: the surfaces that may command runs (stop, checkpoint, status): any of
            ``cli``, ``dashboard``, ``telegram``, ``slack`` (``AFS_CONTROL``, a comma list,
            or ``all``; default none: runs take no commands). See docs/control.md.
        control_max_age: seconds after which a command not yet acted on is ignored
            (``AFS_CONTROL_MAX_AGE``).
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
    burst: int = 20
    pace: float = 10.0
    prometheus_textfile_dir: Path | None = None
    prometheus_keep: float = 3600.0
    control: tuple[str, ...] = ()
    control_max_age: float = 120.0

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
        # Each option's default is its field's: one place to change it.
        defaults = {option.name: option.default for option in fields(cls) if option.name != "state_dir"}
        readers: dict[str, Callable[[Any], Any]] = {
            "strict": lambda default: env.flag("AFS_STRICT", default),
            "dedup_window": lambda default: _num(env, "AFS_DEDUP_WINDOW", default, 0.0),
            "max_attempts": lambda default: _int(env, "AFS_MAX_ATTEMPTS", default, 1),
            "retry_base": lambda default: _num(env, "AFS_RETRY_BASE", default, 0.0),
            "retry_cap": lambda default: _num(env, "AFS_RETRY_CAP", default, 0.0),
            "max_retry_after": lambda default: _num(env, "AFS_MAX_RETRY_AFTER", default, 0.0),
            "exit_flush_timeout": lambda default: _num(env, "AFS_EXIT_FLUSH_TIMEOUT", default, 0.0),
            "retention_days": lambda default: _num(env, "AFS_HISTORY_DAYS", default, 0.0),
            "max_history": lambda default: _int(env, "AFS_HISTORY_MAX_EVENTS", default, 1),
            "console": lambda default: _console(env, default),
            "send_timeout": lambda default: _num(env, "AFS_SEND_TIMEOUT", default, 0.1),
            "allow_http": lambda default: env.flag("AFS_ALLOW_HTTP", default),
            "enabled": lambda default: env.flag("AFS_ENABLED", default),
            "verbosity": lambda default: _verbosity(env, default),
            "max_age": lambda default: _num(env, "AFS_MAX_AGE", default, 1.0),
            "card": lambda default: env.flag("AFS_CARD", default),
            "card_interval": lambda default: _num(env, "AFS_CARD_INTERVAL", default, 0.0),
            "burst": lambda default: _int(env, "AFS_BURST", default, 0),
            "pace": lambda default: _num(env, "AFS_PACE", default, 0.0),
            "prometheus_textfile_dir": lambda default: _path(env, "AFS_PROMETHEUS_TEXTFILE_DIR", default),
            "prometheus_keep": lambda default: _num(env, "AFS_PROMETHEUS_KEEP", default, 60.0),
            "control": lambda default: control_surfaces(env, default),
            "control_max_age": lambda default: _num(env, "AFS_CONTROL_MAX_AGE", default, 1.0),
        }
        values: dict[str, Any] = {}
        for name, reader in readers.items():
            try:
                values[name] = reader(defaults[name])
            except ConfigurationError as error:
                if on_error is None:
                    raise
                on_error(error)
                values[name] = defaults[name]
        return cls(state_dir=default_state_dir(env), **values)


def _num(env: Env, name: str, default: float, minimum: float) -> float:
    value = env.number(name, default, minimum=minimum)
    return default if value is None else value


def _path(env: Env, name: str, default: Path | None) -> Path | None:
    value = env.text(name)
    return default if value is None else Path(value).expanduser()


def _int(env: Env, name: str, default: int, minimum: int) -> int:
    value = env.integer(name, default, minimum=minimum)
    return default if value is None else value


def _console(env: Env, default: str) -> str:
    console = (env.text("AFS_CONSOLE", default) or default).lower()
    if console not in ("auto", "always", "never"):
        raise ConfigurationError("AFS_CONSOLE", f"must be auto, always or never, got {console!r}")
    return console


#: The surfaces that can command a run (``AFS_CONTROL``), in the order docs list them.
CONTROL_SURFACES = ("cli", "dashboard", "telegram", "slack")


def control_surfaces(env: Env, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``AFS_CONTROL``: a comma list of :data:`CONTROL_SURFACES`, ``all``, or ``off``.

    Raises:
        ConfigurationError: a name that is not a surface.
    """
    names = [name.lower() for name in env.items_list("AFS_CONTROL")]
    if not names:
        return default
    if names in (["off"], ["none"], ["false"], ["0"]):
        return ()
    if names in (["all"], ["on"], ["true"], ["1"]):
        return CONTROL_SURFACES
    unknown = [name for name in names if name not in CONTROL_SURFACES]
    if unknown:
        raise ConfigurationError(
            "AFS_CONTROL",
            f"unknown surface(s) {', '.join(unknown)}; use any of {', '.join(CONTROL_SURFACES)}, all or off",
        )
    return tuple(name for name in CONTROL_SURFACES if name in names)


VERBOSITIES = ("quiet", "normal", "verbose")


def _verbosity(env: Env, default: str) -> str:
    value = (env.text("AFS_VERBOSITY", default) or default).strip().lower()
    if value not in VERBOSITIES:
        raise ConfigurationError("AFS_VERBOSITY", f"must be quiet, normal or verbose, got {value!r}")
    return value


# One strict/lenient policy for bad values ------------------------------------------------

_reported: set[str] = set()
_reported_lock = threading.Lock()


def report_config_error(error: ConfigurationError, outcome: str = "using the default") -> None:
    """Log a bad value once per process (the same bad variable read by every channel, a
    CLI and the manager is still one warning)."""
    text = redact(error)
    with _reported_lock:
        if text in _reported:
            return
        _reported.add(text)
    log.warning("afs-callbacks: %s (%s)", text, outcome)


def strict_from(env: Mapping[str, str]) -> bool:
    """``AFS_STRICT`` of ``env``; a bad value is reported and counts as off."""
    try:
        return bool(Env(env, env_file=False).flag("AFS_STRICT"))
    except ConfigurationError as error:
        report_config_error(error)
        return False


def open_env(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | bool | None = None,
    strict: bool | None = None,
) -> Env:
    """The environment over its ``.env`` file. A missing file named by ``AFS_ENV_FILE`` is
    reported once and skipped, unless strict (``strict``, default ``AFS_STRICT``); a file
    named by ``env_file`` itself always raises (the caller asked for that very file).

    Raises:
        ConfigurationError: the named ``.env`` file does not exist (see above).
    """
    try:
        return Env(environ, env_file=env_file)
    except ConfigurationError as error:
        named = env_file not in (None, True, False)
        if named or strict or (strict is None and strict_from(os.environ if environ is None else environ)):
            raise
        report_config_error(error, "no .env file is read")
        return Env(environ, env_file=False)


def read_settings(
    env: Env | None = None,
    strict: bool | None = None,
    *,
    on_error: Callable[[ConfigurationError], None] | None = None,
) -> Settings:
    """The core settings. Strict (``strict``, default ``AFS_STRICT``): the first bad value
    raises. Lenient: each bad value keeps its default and is reported once (to ``on_error``
    when given, else as one log warning) -- it never turns a channel off.

    Raises:
        ConfigurationError: a bad value, in strict mode.
    """
    env = open_env(None, None, strict) if env is None else env
    if strict is None:
        strict = strict_from(env)
    if strict:
        settings = Settings.from_env(env)
    else:
        settings = Settings.from_env(env, on_error=on_error or report_config_error)
    if not settings.enabled:
        announce_off(env)
    return settings


# The master switch, said the same way everywhere -----------------------------------------

#: What the library says once per process while ``AFS_ENABLED`` is off (the CLI says the
#: same, with what to do for its command: ``unset it to test``).
OFF_TODO = "unset it to turn notifications on"


def switched_off(env: Env) -> str | None:
    """The switch as the user wrote it when it turns the library off (``AFS_ENABLED=false``,
    ``AFS_ENABLED=0 (in /home/me/.env)``), else None (on, or a value that is not a flag,
    which keeps the default: on)."""
    try:
        if env.flag("AFS_ENABLED", True):
            return None
    except ConfigurationError:
        return None
    raw = (env.get("AFS_ENABLED") or "").strip() or '""'
    where = f" (in {env.env_file})" if "AFS_ENABLED" in env.file_names and env.env_file else ""
    return f"AFS_ENABLED={raw}{where}"


def off_line(switch: str, todo: str = OFF_TODO, *, stored: bool = False) -> str:
    """``AFS_ENABLED=false: nothing is sent (unset it to test)``: the one sentence for the
    switch, in the library, the CLI and the dashboard."""
    return f"{switch}: nothing is sent{' or stored' if stored else ''} ({todo})"


_announced_off = False


def announce_off(env: Env) -> None:
    """Say once per process that the switch is off: a warning when a ``.env`` file turns it
    off (easy to forget there), else an info line (a job started with it on purpose)."""
    global _announced_off
    switch = switched_off(env)
    if switch is None or _announced_off:
        return
    _announced_off = True
    level = logging.WARNING if "AFS_ENABLED" in env.file_names else logging.INFO
    log.log(level, "afs-callbacks: %s", off_line(switch, stored=True))


def channel_settings(env: Env, settings: Settings | None = None) -> Settings:
    """The settings a channel's ``from_env`` uses: ``settings`` when the caller has them,
    else read from ``env`` leniently and silently (the caller reports bad core values once;
    a channel must not fail, nor warn a second time, because of one)."""
    if settings is not None:
        return settings
    return Settings.from_env(env, on_error=lambda error: None)
