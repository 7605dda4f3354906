"""The few exceptions the library raises (only ever for configuration, never for delivery)."""

from __future__ import annotations


class AFSCallbacksError(Exception):
    """Base class of every exception raised by afs-callbacks."""


class ConfigurationError(AFSCallbacksError, ValueError):
    """A setting is wrong. The message names the variable and says what is wrong with it.

    Args:
        variable: the environment variable or argument name, e.g. ``SMTP_PORT``.
        problem: what is wrong, e.g. ``must be a port number 1-65535, got '99999'``.
    """

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class MissingExtraError(AFSCallbacksError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` to run,
    in the form that works for how the package was installed (a checkout, a wheel...)."""

    def __init__(self, feature: str, extra: str) -> None:
        from afs_callbacks._install import install_hint

        self.extra = extra
        super().__init__(f"{feature} needs the '{extra}' extra: {install_hint(extra)}")
