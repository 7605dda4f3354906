"""A service that echoes the request back in its error answer (as many do) must not carry a
secret into any output: the URL's path token, its ``sig=``, a Bearer value, an ntfy token
and a URL password ``user:password@``, each echoed plain, with JSON-escaped slashes,
percent-encoded, as HTML entities and bare, some straddling the 300th character where
answers are cut. Checked in DEBUG logs, ``afs-notify -v test``, ``status --check``,
``history``, ``history --json`` and the database file itself."""

from __future__ import annotations

import base64
import html
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from afs_callbacks.config import Env
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.cli.helpers import afs_notify, cli_env

PATH_TOKEN = "pAthT0ken" + uuid.uuid4().hex
SIG = "S1g" + uuid.uuid4().hex
BEARER = "B3arer" + uuid.uuid4().hex
NTFY_TOKEN = "tk_" + uuid.uuid4().hex[:29]
PASSWORD = "p@ss/" + uuid.uuid4().hex[:12]
SECRETS = (PATH_TOKEN, SIG, BEARER, NTFY_TOKEN, PASSWORD)


_answered = itertools.count()


def echo(request: ReceivedRequest) -> Reply:
    """Answer 400 (401 for probes) with the request echoed in every encoding; each answer
    leads with another encoding, starting near the 300th character where answers are cut."""
    query = "&".join(f"{key}={quote(value)}" for key, values in request.query.items() for value in values)
    seen = f"{request.path}?{query} {request.headers.get('Authorization', '')}"
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        seen += " user " + base64.b64decode(auth[6:]).decode()
    copies = [
        seen,
        json.dumps({"request": seen}).replace("/", "\\/"),
        quote(seen, safe=""),
        html.escape(seen),
        seen.replace("&", "&amp;").replace("/", "&#x2F;"),
    ]
    first = next(_answered) % len(copies)
    body = "e" * 260 + " " + " | ".join(copies[first:] + copies[:first])
    return Reply(401 if request.method == "GET" else 400, body)


@pytest.fixture
def service() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(responder=echo) as receiver:
        yield receiver


def settings_for(service: LoopbackReceiver, state: Path) -> dict[str, str]:
    host = f"127.0.0.1:{service.port}"
    return {
        "WEBHOOK_URL": f"http://{host}/hooks/{PATH_TOKEN}?api-version=1&sig={SIG}",
        "WEBHOOK_HEADERS": json.dumps({"Authorization": f"Bearer {BEARER}"}),
        "NTFY_URL": f"http://{host}",
        "NTFY_TOPIC": "runs-7Hq2xPz9Kw",
        "NTFY_TOKEN": NTFY_TOKEN,
        "ALERTMANAGER_URL": f"http://am:{quote(PASSWORD, safe='')}@{host}",
        "AFS_STATE_DIR": str(state),
        "AFS_MAX_ATTEMPTS": "1",
        "AFS_CONSOLE": "never",
    }


def assert_clean(text: str, where: str) -> None:
    """No secret, and no 10 characters in a row of one (a half-cut secret), in any form."""
    for secret in SECRETS:
        for form in {secret, quote(secret, safe=""), html.escape(secret)}:
            windows = {form[i : i + 10] for i in range(len(form) - 9)}
            leaked = sorted(window for window in windows if window in text)
            assert not leaked, f"{where} shows part of a secret: {leaked[:3]}"


def state_bytes(state: Path) -> str:
    return "".join(path.read_bytes().decode("latin-1") for path in state.glob("outbox.sqlite3*"))


def wait_for_errors(manager: NotificationManager, channels: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.flush(1)
        errors = [
            d.last_error for entry in manager.outbox.history() for d in entry.deliveries if d.last_error
        ]
        if len(errors) >= channels:
            return
        time.sleep(0.05)
    raise AssertionError("the echoed errors were not recorded in time")


def test_echoed_secrets_are_masked_in_logs_history_and_the_database(
    service: LoopbackReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "echo-state"
    env = Env(settings_for(service, state), env_file=False)
    manager = NotificationManager.from_env(env, strict=True)
    assert set(manager.handlers) >= {"webhook", "ntfy", "alertmanager"}
    try:
        manager.notify("run failed", "boom", EventType.TRAINING_FAILED, level=NotificationLevel.ERROR)
        service.wait_for(3)
        wait_for_errors(manager, 3)
        details = [d.last_error or "" for entry in manager.outbox.history() for d in entry.deliveries]
    finally:
        manager.close(timeout=1)

    assert any("eeee" in detail for detail in details)  # the echo reached the detail...
    for detail in details:
        assert_clean(detail, "a delivery's error")  # ...with every secret masked
    assert_clean(caplog.text, "the DEBUG log")
    assert_clean(state_bytes(state), "the database file")

    env_cli = cli_env(**settings_for(service, state))
    for args in (("history",), ("history", "--json")):
        result = afs_notify(*args, env=env_cli)
        assert result.returncode == 0, result.stderr
        assert "eeee" in result.stdout or args == ("history",)
        assert_clean(result.stdout + result.stderr, f"afs-notify {' '.join(args)}")


def test_echoed_secrets_are_masked_by_test_and_status_check(
    service: LoopbackReceiver, tmp_path: Path
) -> None:
    env = cli_env(**settings_for(service, tmp_path / "cli-state"))

    tested = afs_notify("-v", "test", "--timeout", "10", env=env)
    checked = afs_notify("status", "--check", env=env)

    assert "webhook" in tested.stdout and "HTTP 400" in tested.stdout
    assert "unreachable" in checked.stdout and "HTTP 401" in checked.stdout
    assert_clean(tested.stdout + tested.stderr, "afs-notify -v test")
    assert_clean(checked.stdout + checked.stderr, "afs-notify status --check")
    assert_clean(state_bytes(tmp_path / "cli-state"), "the database file after the CLI")
