"""The dashboard's Stop and Checkpoint: the same token, CSRF and Origin rules as its retry,
a stop confirmed by a second request, and every command (refused ones too) stored; then
the buttons clicked in Debian's Chromium on a real Lightning training's page."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.control import ControlPolicy
from afs_callbacks.delivery.outbox import Outbox
from tests.control.support import commands
from tests.control.test_commands import stored_run
from tests.dashboard.support import base_url, request, running_dashboard, wait_for
from tests.dashboard.test_security import csrf_of

TOKEN = "dashboard-test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ON = ControlPolicy(surfaces=("dashboard",))


@pytest.fixture
def history(isolated_env: Path) -> Path:
    path = isolated_env / "outbox.sqlite3"
    with Outbox(path) as store:
        stored_run(store, "run-1", control={"accepts": ["dashboard"]})
    return path


def post(url: str, path: str, body: dict[str, Any], **headers: str) -> Any:
    return request(url, path, method="POST", body=body, headers={**AUTH, **headers})


def test_a_stop_needs_its_confirmation(history: Path) -> None:
    with running_dashboard(history, token=TOKEN, policy=ON) as server:
        url = base_url(server)
        csrf = csrf_of(url, AUTH)
        asked = post(
            url, "/api/command", {"run_id": "run-1", "action": "stop"}, **{"X-AFS-CSRF": csrf, "Origin": url}
        )
        assert asked.status == 200 and asked.json()["command"]["state"] == "unconfirmed"
        page = request(url, "/api/run/run-1", headers=AUTH).json()
        assert page["control"]["dashboard"] is True
        assert [c["state"] for c in page["control"]["commands"]] == ["unconfirmed"]
        confirmed = post(
            url, "/api/command/confirm", {"id": asked.json()["command"]["id"]}, **{"X-AFS-CSRF": csrf}
        )
        assert confirmed.json()["command"]["state"] == "pending"
        checkpoint = post(
            url, "/api/command", {"run_id": "run-1", "action": "checkpoint"}, **{"X-AFS-CSRF": csrf}
        )
        assert checkpoint.json()["command"]["state"] == "pending"  # a checkpoint needs no confirmation
    kept = commands(history.parent)
    assert [(c.action, c.state, c.source) for c in kept] == [
        ("stop", "pending", "dashboard"),
        ("checkpoint", "pending", "dashboard"),
    ]
    assert kept[0].actor == "dashboard user at 127.0.0.1"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no CSRF token"),
        pytest.param({"X-AFS-CSRF": "guessed"}, id="wrong CSRF token"),
        pytest.param({"X-AFS-CSRF": "<real>", "Origin": "http://evil.example"}, id="another origin"),
    ],
)
def test_a_cross_site_command_is_refused_and_kept(history: Path, headers: dict[str, str]) -> None:
    with running_dashboard(history, token=TOKEN, policy=ON) as server:
        url = base_url(server)
        if headers.get("X-AFS-CSRF") == "<real>":
            headers = {**headers, "X-AFS-CSRF": csrf_of(url, AUTH)}
        answer = post(url, "/api/command", {"run_id": "run-1", "action": "stop"}, **headers)
    assert answer.status == 403
    [kept] = commands(history.parent)
    assert kept.state == "refused" and "CSRF" in kept.detail


def test_without_the_token_nothing_is_stored(history: Path) -> None:
    with running_dashboard(history, token=TOKEN, policy=ON) as server:
        answer = request(
            base_url(server), "/api/command", method="POST", body={"run_id": "run-1", "action": "stop"}
        )
    assert answer.status == 401
    assert commands(history.parent) == []


def test_control_disabled_here_refuses(history: Path) -> None:
    with running_dashboard(history, token=TOKEN) as server:  # AFS_CONTROL unset for the dashboard
        url = base_url(server)
        answer = post(
            url,
            "/api/command",
            {"run_id": "run-1", "action": "checkpoint"},
            **{"X-AFS-CSRF": csrf_of(url, AUTH)},
        )
    assert answer.json()["command"]["state"] == "refused"
    assert "AFS_CONTROL does not name dashboard" in commands(history.parent)[0].detail


# In the browser ----------------------------------------------------------------------------

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from tests.dashboard.test_browser import CHROMEDRIVER, CHROMIUM

    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from tests.dashboard import test_browser

    yield from test_browser.browser.__wrapped__(tmp_path)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_stop_and_checkpoint_clicked_on_a_real_trainings_page(
    browser: Any, isolated_env: Path, tmp_path: Path
) -> None:
    """A real tiny Lightning training (its own process, AFS_CONTROL=dashboard); the page's
    Checkpoint, then Stop and "Yes, stop it" clicked in Chromium."""
    pytest.importorskip("lightning.pytorch")
    from tests.dashboard.test_browser import TRAIN, keep_screenshot, status_of

    isolated_env.mkdir(parents=True, exist_ok=True)
    log = (tmp_path / "training.log").open("w")
    env = {
        **os.environ,
        "AFS_STATE_DIR": str(isolated_env),
        "AFS_CONTROL": "dashboard",
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
    }
    training = subprocess.Popen(
        [sys.executable, str(TRAIN), "clicked-run", "40", "0.1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    path = isolated_env / "outbox.sqlite3"
    try:

        def takes_commands() -> bool:
            try:
                with Outbox(path, read_only=True) as store:
                    state = store.run("clicked-run")
                    return state is not None and "dashboard" in state.control.get("accepts", [])
            except Exception:
                return False

        wait_for(takes_commands, timeout=300, what="the training to start")
        with running_dashboard(path, token=TOKEN, policy=ON) as server:
            browser.get(f"{base_url(server)}/run/clicked-run?token={TOKEN}")
            click = lambda selector: browser.execute_script(  # noqa: E731
                "const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b;", selector
            )
            wait_for(lambda: click("#checkpoint-run"), timeout=60, what="the Checkpoint button")
            row = "#commands tr[data-state='done'] td:nth-child(6)"
            detail = wait_for(
                lambda: browser.execute_script(
                    f"const c = document.querySelector(\"{row}\"); return c ? c.textContent : '';"
                ),
                timeout=60,
                what="the checkpoint done on the page",
            )
            assert "checkpoint saved at step" in detail and ".ckpt" in detail
            wait_for(lambda: click("#stop-run"), what="the Stop button")
            wait_for(
                lambda: browser.execute_script("return !!document.querySelector('#stop-confirm');"),
                what="the question",
            )
            keep_screenshot(browser, tmp_path, "dashboard-stop-confirm.png")
            time.sleep(1.5)
            assert training.poll() is None  # Stop alone stopped nothing
            click("#stop-yes")
            training.wait(timeout=120)
            wait_for(
                lambda: status_of(browser, ".run-head .badge") not in ("", "running"),
                timeout=30,
                what="the end",
            )
            time.sleep(1.5)
            keep_screenshot(browser, tmp_path, "dashboard-stopped.png")
    finally:
        if training.poll() is None:
            training.terminate()
        training.wait(timeout=60)
        log.close()
    assert training.returncode == 0, (tmp_path / "training.log").read_text()[-2000:]
    kept = [(c.action, c.state, c.source) for c in commands(isolated_env)]
    assert kept == [("checkpoint", "done", "dashboard"), ("stop", "done", "dashboard")]
    with Outbox(path, read_only=True) as store:
        state = store.run("clicked-run")
    assert (
        state is not None
        and state.end_reason
        and state.end_reason.startswith("stopped by dashboard user at 127.0.0.1 via dashboard")
    )
    assert (state.step or 0) < 40 * 8
