"""The package's loggers, each with secret redaction attached.

A logging filter only sees records created on its own logger (not on children), so every
module takes its logger from :func:`get_logger` rather than ``logging.getLogger``.
"""

from __future__ import annotations

import logging

from afs_callbacks.redaction import install_log_redaction


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name``, redacting secrets from every message it emits."""
    logger = logging.getLogger(name)
    install_log_redaction(logger)
    return logger
