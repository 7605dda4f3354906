"""Fixtures every test here gets, under tests/ and integrations/ alike: its own state
directory and a clean environment, plus a loopback HTTP receiver to post to.

Kept at the repository root so that both folders share one copy, and so that pytest puts
the root on ``sys.path`` (``from tests.channels.support import ...`` works however pytest
is started). What only one folder needs lives in that folder's conftest.py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks.channels import env_prefixes
from afs_callbacks.testing import LoopbackReceiver

# Frameworks: CPU only, no hub downloads, Keras on torch (no TensorFlow needed).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Variables a developer's shell or .env might set that would change what tests see.
_CHANNEL_PREFIXES = (
    "AFS_",
    "DESKTOP_",
    "SMTP_",
    "FROM_EMAIL",
    "TO_EMAILS",
    "EMAIL_",
    "SLACK_",
    "DISCORD_",
    "WEBHOOK_",
    "TELEGRAM_",
    "TEAMS_",
    "NTFY_",
    "PAGERDUTY_",
    "ALERTMANAGER_",
    "APPRISE_",
    "GPU_",
    "COST_",
    "CONSOLE_",
)
# ...and whatever the channel registry declares (a new channel needs no line here).
_CHANNEL_PREFIXES = (*_CHANNEL_PREFIXES, *env_prefixes())


# The user's real home, read once: caches that are slow to rebuild stay where they are when
# each test gets a home of its own (below).
_REAL_HOME = Path.home()
os.environ.setdefault("MPLCONFIGDIR", str(_REAL_HOME / ".cache" / "matplotlib"))
os.environ.setdefault("KERAS_HOME", str(_REAL_HOME / ".keras"))

# What runs before any test's own isolation (a module- or session-scoped fixture that trains
# a run) must not reach the user's death watcher, found in $XDG_RUNTIME_DIR/afs-callbacks or
# /tmp/afs-callbacks-<uid>: this test process gets a runtime dir of its own (each test then
# gets its own, below), and a watcher started there lets go soon.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="afs-tests-run-")
atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
os.environ["AFS_DEATHWATCH_GRACE"] = "1"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Clear channel settings and point the state directory at a fresh temp folder; the
    test's own death watcher, if one is left, is killed afterwards."""
    for name in list(os.environ):
        if name.startswith(_CHANNEL_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("AFS_STATE_DIR", str(state))
    # A manager built from a mapping without AFS_STATE_DIR (from_env({...})), or a child
    # process given an environment of its own, falls back to ~/.local/state/afs-callbacks:
    # with a home and XDG_STATE_HOME of the test's own, no test can write the user's history.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / ".local" / "state"))
    # The death watcher is one per user and host, found in $XDG_RUNTIME_DIR/afs-callbacks:
    # a runtime dir of the test's own gives each test its own watcher (and none of the
    # user's). Let it go soon after the run ends instead of a minute later, so a test
    # session does not keep dozens of them alive.
    runtime = tmp_path / "xdg-run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("AFS_DEATHWATCH_GRACE", "1")
    monkeypatch.chdir(tmp_path)  # no stray ./.env from the developer's checkout
    yield state
    # A run this process started and never ended (a unit test's tracker) keeps its watcher
    # for as long as the process lives: the test session's, minutes, dozens of them.
    from afs_callbacks.delivery import deathwatch

    pid = deathwatch.watcher_pid()  # of this test's runtime dir: monkeypatch restores it later
    if pid is not None and pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def receiver() -> Iterator[LoopbackReceiver]:
    """A real HTTP server on 127.0.0.1 recording requests; script answers with .reply()."""
    with LoopbackReceiver() as server:
        yield server


@pytest.fixture
def watch_env(isolated_env: Path, receiver: LoopbackReceiver) -> dict[str, str]:
    """The environment of child runs that the death watcher watches (it gets theirs):
    the receiver as their webhook, a fast watcher round, a short linger (a watcher left
    by a failed test is killed by ``isolated_env``)."""
    env = dict(os.environ)
    env.update(
        WEBHOOK_URL=receiver.url("/hook"),
        AFS_STATE_DIR=str(isolated_env),
        AFS_DEATHWATCH_INTERVAL="0.2",
        AFS_DEATHWATCH_GRACE="1",
    )
    isolated_env.mkdir(parents=True, exist_ok=True)
    return env
