"""Who may use the dashboard: the token off loopback, the Host check on loopback, and the
retry (its only write) refused to any other site's page."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from afs_callbacks.delivery.outbox import Outbox
from tests.cli.helpers import cli_env
from tests.dashboard.support import add_event, base_url, request, running_dashboard, wait_for


@pytest.fixture
def dead_history(isolated_env: Path) -> tuple[Path, list[str]]:
    """Two dead messages on email and one on slack; returns the path and the email ids."""
    path = isolated_env / "outbox.sqlite3"
    outbox = Outbox(path)
    ids = []
    for title in ("first", "second"):
        event = add_event(outbox, "run-1", title, ["email", "slack"])
        outbox.mark_dead(event.id, "email", "SMTP 535 authentication failed")
        ids.append(event.id)
    outbox.mark_dead(ids[0], "slack", "HTTP 404 no_service")
    outbox.mark_delivered(ids[1], "slack")
    outbox.close()
    return path, ids


def states(path: Path) -> dict[tuple[str, str], str]:
    """(event id, channel) -> delivery state, read straight from the file."""
    with sqlite3.connect(path) as conn:
        return {(e, c): s for e, c, s in conn.execute("SELECT event_id, channel, state FROM deliveries")}


def csrf_of(url: str, headers: dict[str, str] | None = None) -> str:
    """The CSRF token the page shell carries (what the page's own script sends back)."""
    page = request(url, "/", headers=headers).text
    match = re.search(r'name="afs-csrf" content="([^"]+)"', page)
    assert match, page
    return match.group(1)


def test_the_page_retries_one_dead_message(dead_history: tuple[Path, list[str]]) -> None:
    path, ids = dead_history
    with running_dashboard(path) as server:
        url = base_url(server)
        answer = request(
            url,
            "/api/retry",
            method="POST",
            body={"event_id": ids[0], "channel": "email"},
            headers={"X-AFS-CSRF": csrf_of(url), "Origin": url},
        )
    assert answer.status == 200 and answer.json()["requeued"] == 1
    after = states(path)
    assert after[ids[0], "email"] == "pending"
    assert after[ids[1], "email"] == "dead" and after[ids[0], "slack"] == "dead"


def test_the_page_retries_every_dead_message_of_a_channel(dead_history: tuple[Path, list[str]]) -> None:
    path, ids = dead_history
    with running_dashboard(path) as server:
        url = base_url(server)
        answer = request(
            url, "/api/retry", method="POST", body={"channel": "email"}, headers={"X-AFS-CSRF": csrf_of(url)}
        )
    assert answer.json()["requeued"] == 2
    assert [states(path)[i, "email"] for i in ids] == ["pending", "pending"]
    assert states(path)[ids[0], "slack"] == "dead"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no CSRF token (a form on another site)"),
        pytest.param({"X-AFS-CSRF": "guessed"}, id="wrong CSRF token"),
        pytest.param({"X-AFS-CSRF": "<real>", "Origin": "http://evil.example"}, id="another origin"),
        pytest.param({"X-AFS-CSRF": "<real>", "Origin": "null"}, id="sandboxed frame"),
    ],
)
def test_a_cross_site_retry_is_refused(dead_history: tuple[Path, list[str]], headers: dict[str, str]) -> None:
    path, _ = dead_history
    before = states(path)
    with running_dashboard(path) as server:
        url = base_url(server)
        if headers.get("X-AFS-CSRF") == "<real>":
            headers = {**headers, "X-AFS-CSRF": csrf_of(url)}
        answer = request(url, "/api/retry", method="POST", body={}, headers=headers)
    assert answer.status == 403
    assert states(path) == before


def test_a_foreign_host_name_is_refused_on_loopback(dead_history: tuple[Path, list[str]]) -> None:
    """A site that rebinds its DNS name to 127.0.0.1 sends its own name as Host."""
    path, _ = dead_history
    with running_dashboard(path) as server:
        url = base_url(server)
        foreign = request(url, "/api/runs", headers={"Host": "attacker.example:8765"})
        local = request(url, "/api/runs", headers={"Host": f"localhost:{server.server_address[1]}"})
    assert foreign.status == 421
    assert local.status == 200


def test_with_a_token_every_request_needs_it(dead_history: tuple[Path, list[str]]) -> None:
    path, _ = dead_history
    token = "t0ken-for-the-dashboard"
    with running_dashboard(path, token=token, loopback=False) as server:
        url = base_url(server)
        assert server.url.endswith(f"?token={token}")
        assert request(url, "/").status == 401
        assert request(url, "/api/runs").status == 401
        assert request(url, "/api/runs", headers={"Authorization": "Bearer wrong-token"}).status == 401
        assert request(url, "/api/runs", headers={"Authorization": f"Bearer {token}"}).status == 200
        first = request(url, f"/run/x?token={token}")
        assert first.status == 303 and first.headers["location"] == "/run/x"
        cookie = first.headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
        assert request(url, "/api/runs", headers={"Cookie": cookie}).status == 200
        refused = request(url, "/api/retry", method="POST", body={"channel": "email"})
    assert refused.status == 401
    assert "dead" in states(path).values()


def test_the_command_requires_a_token_off_loopback(dead_history: tuple[Path, list[str]]) -> None:
    """`afs-notify dashboard --host 0.0.0.0` generates a token and prints the URL with it."""
    path, _ = dead_history
    process = subprocess.Popen(
        [sys.executable, "-m", "afs_callbacks", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env=cli_env(AFS_STATE_DIR=str(path.parent)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:(\d+)/)\?token=(\S+)", line)
        assert match, line
        url, token = match.group(1).rstrip("/"), match.group(3)
        assert request(url, "/api/runs").status == 401
        assert request(url, "/api/runs", headers={"Authorization": f"Bearer {token}"}).status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def _dashboard(*options: str, state_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afs_callbacks",
            "dashboard",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            *options,
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_command_asks_for_a_token_on_loopback_too(dead_history: tuple[Path, list[str]]) -> None:
    """On a shared node loopback is every user's: the printed URL carries a token (as
    Jupyter's does), and without it the pages and the API answer 401."""
    path, _ = dead_history
    process = _dashboard(state_dir=path.parent)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"afs-notify dashboard: (http://127\.0\.0\.1:(\d+))/\?token=(\S+)\n", line)
        assert match and match.group(2) != "0", line
        url, token = match.group(1), match.group(3)
        answer = wait_for(lambda: request(url, "/api/outbox"), what="the server")
        assert answer.status == 401
        assert request(url, "/").status == 401
        runs = request(url, "/api/outbox", headers={"Authorization": f"Bearer {token}"})
        assert runs.status == 200 and runs.json()["counts"]["email"] == {"dead": 2}
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode is not None  # it ends when asked


def test_no_token_serves_a_single_user_machine_on_loopback(dead_history: tuple[Path, list[str]]) -> None:
    path, _ = dead_history
    process = _dashboard("--no-token", state_dir=path.parent)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"afs-notify dashboard: (http://127\.0\.0\.1:(\d+))/\n", line)
        assert match and match.group(2) != "0", line
        runs = wait_for(lambda: request(match.group(1), "/api/outbox"), what="the server")
        assert runs.status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_no_token_is_refused_off_loopback(dead_history: tuple[Path, list[str]]) -> None:
    path, _ = dead_history
    process = _dashboard("--no-token", "--host", "0.0.0.0", state_dir=path.parent)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--no-token is for a loopback address only" in stderr
