"""Channels: one module per service, each a :class:`NotificationHandler` that describes itself.

The registry finds the channels by scanning this package (as Apprise finds its plugins):
every public module here that defines a concrete :class:`NotificationHandler` with a
``name`` of its own is a channel. Its class attributes (``variables``, ``prefix``,
``variable_aliases``, ``default_min_level``, ``hosts``, ``secret_patterns``...) are the
one declaration everything else derives from: the package's lazy exports, the manager's
routing variables (``<PREFIX>_MIN_LEVEL``, ``<PREFIX>_EVENTS``) and default level,
``afs-notify status``'s "did you mean" for misspelt variables and hosts, the tests' clean
environment and the check that ``.env.example`` documents every variable. Adding a channel
is its module, a test, a doc page and its ``.env.example`` lines (and, for type checkers,
one line in ``afs_callbacks/__init__.py``'s ``TYPE_CHECKING`` block, which a test asks for).

The scan imports every channel module, so it runs on first use, not when this package is
imported: ``from afs_callbacks.channels.base import DeliveryResult`` stays cheap, and a
channel's optional dependency is imported only by the channel when it sends.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from afs_callbacks.channels.base import (
    ChannelStatus,
    DeliveryResult,
    NotificationHandler,
    Outcome,
)

if TYPE_CHECKING:
    from afs_callbacks.config import Env, Settings


@dataclass(frozen=True)
class ChannelSpec:
    """How a channel is found, configured and routed (read from its class).

    Attributes:
        name: the channel's name in routing, history and CLI output.
        target: ``"module:Class"`` of its handler.
        prefix: the routing variables' prefix: ``<PREFIX>_MIN_LEVEL``, ``<PREFIX>_EVENTS``,
            ``<PREFIX>_CARD``.
        variables: every environment variable its ``from_env`` reads (routing ones aside).
        min_level: the default of ``<PREFIX>_MIN_LEVEL`` (SMS costs money: ``error``).
    """

    name: str
    target: str
    prefix: str
    variables: tuple[str, ...] = ()
    min_level: str = "info"

    @classmethod
    def of(cls, handler: type[NotificationHandler]) -> ChannelSpec:
        """The spec a channel class declares."""
        return cls(
            handler.name,
            f"{handler.__module__}:{handler.__qualname__}",
            handler.prefix or handler.name.upper(),
            tuple(handler.variables),
            handler.default_min_level,
        )

    @property
    def module(self) -> str:
        """The module that defines the handler."""
        return self.target.partition(":")[0]

    @property
    def class_name(self) -> str:
        """The handler's class name (also its public name in ``afs_callbacks``)."""
        return self.target.partition(":")[2]

    @property
    def routing_variables(self) -> tuple[str, ...]:
        """The routing variables every channel has."""
        return (f"{self.prefix}_MIN_LEVEL", f"{self.prefix}_EVENTS", f"{self.prefix}_CARD")


_V = TypeVar("_V")
_scan_lock = threading.RLock()


@functools.lru_cache(maxsize=1)
def _scan() -> tuple[type[NotificationHandler], ...]:
    found: dict[str, type[NotificationHandler]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if _is_channel(value, module.__name__):
                other = found.setdefault(value.name, value)
                if other is not value:
                    raise TypeError(f"two channels are named {value.name!r}: {other} and {value}")
    return tuple(sorted(found.values(), key=lambda handler: (handler.listing_order, handler.name)))


def _is_channel(value: object, module: str) -> bool:
    """A concrete handler class defined in ``module`` that names itself."""
    return (
        inspect.isclass(value)
        and issubclass(value, NotificationHandler)
        and value.__module__ == module
        and "name" in vars(value)
        and not inspect.isabstract(value)
    )


def channel_classes() -> tuple[type[NotificationHandler], ...]:
    """Every channel class in this package, in the order ``afs-notify status`` lists them.

    The first call imports every channel module (their optional dependencies stay unloaded).
    """
    # One scan at a time: two threads importing the same modules each wait on the other.
    with _scan_lock:
        return _scan()


class _Derived(Mapping[str, _V]):
    """A mapping computed from the channel classes on first use (the scan is not free)."""

    def __init__(self, build: Callable[[], dict[str, _V]]) -> None:
        self._build = build

    @functools.cached_property
    def _items(self) -> dict[str, _V]:
        return self._build()

    def __getitem__(self, key: str) -> _V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(self._items)


#: Every channel by name, in the order ``afs-notify status`` lists them and users meet them.
REGISTRY: Mapping[str, ChannelSpec] = _Derived(
    lambda: {handler.name: ChannelSpec.of(handler) for handler in channel_classes()}
)
#: Channel name -> "module:Class" (derived from :data:`REGISTRY`; kept for callers of old).
CHANNELS: Mapping[str, str] = _Derived(lambda: {name: spec.target for name, spec in REGISTRY.items()})


def load_channel_class(name: str) -> type[NotificationHandler]:
    """Import and return the handler class registered under ``name``.

    Raises:
        KeyError: no channel has that name.
        ImportError: the channel's module is not available.
    """
    spec = REGISTRY[name]
    module = importlib.import_module(spec.module)
    handler_class: type[NotificationHandler] = getattr(module, spec.class_name)
    return handler_class


def build_channel(name: str, env: Env, settings: Settings | None = None) -> NotificationHandler | None:
    """The channel ``name`` built from ``env`` (None when its variables are unset), with
    the core ``settings`` (send timeout, plain-http opt-in) passed to its ``from_env``.

    Raises:
        KeyError: no channel has that name.
        ImportError: the channel's module (or its optional dependency) is not available.
        ConfigurationError: a variable is set but wrong (names the variable).
    """
    from_env: Callable[..., NotificationHandler | None] = load_channel_class(name).from_env
    if settings is not None and "settings" in inspect.signature(from_env).parameters:
        return from_env(env, settings=settings)
    return from_env(env)


def exported_classes() -> dict[str, str]:
    """Public class name -> module, for ``afs_callbacks``'s lazy attributes."""
    return {spec.class_name: spec.module for spec in REGISTRY.values()}


def channel_variables() -> tuple[str, ...]:
    """Every channel variable, routing ones included (``SLACK_WEBHOOK_URL``, ``SMS_MIN_LEVEL``)."""
    names: list[str] = []
    for spec in REGISTRY.values():
        names += [*spec.variables, *spec.routing_variables]
    return tuple(dict.fromkeys(names))


def env_prefixes() -> tuple[str, ...]:
    """The prefixes of every channel variable (``SLACK_``, ``SMTP_``, ``TO_EMAILS``...): what
    a test clears so that a developer's own settings do not leak into it. A variable outside
    its channel's prefix counts by its first word when others share it (``SMTP_``), else
    whole (``TO_EMAILS``), so that no unrelated variable (``TO_...``) is caught."""
    prefixes = []
    for spec in REGISTRY.values():
        prefixes.append(f"{spec.prefix}_")
        others = [name for name in spec.variables if not name.startswith(f"{spec.prefix}_")]
        words = [name.split("_")[0] for name in others]
        prefixes += [
            f"{word}_" if words.count(word) > 1 else name for name, word in zip(others, words, strict=True)
        ]
    return tuple(dict.fromkeys(prefixes))


__all__ = [
    "CHANNELS",
    "REGISTRY",
    "ChannelSpec",
    "ChannelStatus",
    "DeliveryResult",
    "NotificationHandler",
    "Outcome",
    "build_channel",
    "channel_classes",
    "channel_variables",
    "env_prefixes",
    "exported_classes",
    "load_channel_class",
]
