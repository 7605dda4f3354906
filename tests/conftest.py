"""Fixtures for the unit tests only. The shared ones (a clean environment and state
directory per test, the loopback ``receiver``) are in the repository root's conftest.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def library_logging_restored() -> Iterator[None]:
    """Undo what a test did to the package logger (the CLI's in-process ``main()`` turns
    propagation off), so later tests' ``caplog`` still sees the library's records."""
    logger = logging.getLogger("afs_callbacks")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]
