"""The environment reader: :class:`Env`, ``os.environ`` over a ``.env`` file, typed getters.

Kept apart from :mod:`afs_callbacks.config` (which re-exports :class:`Env`; import it from
there) so that module holds the core :class:`~afs_callbacks.config.Settings` and the
strict/lenient policy, and this one only reading and checking single values. Every getter
raises :class:`ConfigurationError` naming the variable and what is wrong; a URL or secret
value is never echoed back in that message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.urls import validate_url

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
            # Imported here: config imports this module (Env lives apart, see the docstring).
            from afs_callbacks.config import channel_settings

            allow_http = channel_settings(self).allow_http
        return validate_url(value, name, allow_http=allow_http, secret=secret)
