"""A failed run's page in a real browser (Debian's headless Chromium through chromedriver):
the failure's event opens on the error first, and Python's full traceback under it.

Skipped like tests/dashboard/test_browser.py when Selenium, chromium or chromedriver is
missing (scripts/install.sh installs them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from afs_callbacks.config import Settings
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.manager import NotificationManager
from afs_callbacks.runstate import FAILED
from tests.dashboard.support import run_state, running_dashboard, wait_for
from tests.dashboard.test_browser import browser, keep_screenshot, pytestmark  # noqa: F401

ERROR = "RuntimeError: CUDA error: device-side assert triggered"


def training_step() -> None:
    raise RuntimeError("CUDA error: device-side assert triggered")


def test_a_failures_event_opens_on_its_error_then_the_full_traceback(
    browser: Any,  # noqa: F811
    isolated_env: Path,
    tmp_path: Path,
) -> None:
    path = isolated_env / "outbox.sqlite3"
    with NotificationManager(settings=Settings(state_dir=isolated_env, console="never")) as manager:
        try:
            training_step()
        except RuntimeError as error:
            manager.notify_training_failed("tiny-net", "failed-run", error, step=12, epoch=1)
    outbox = Outbox(path)
    started = time.time() - 120
    outbox.save_run(run_state("failed-run", status=FAILED, started=started, error=ERROR), [])
    outbox.close()
    with running_dashboard(path) as server:
        browser.get(f"{server.url.rstrip('/')}/run/failed-run")
        read = "const d = document.querySelector('details.failure'); return d ? d.outerHTML : '';"
        wait_for(lambda: browser.execute_script(read), timeout=30, what="the failure's event")
        browser.execute_script("document.querySelector('details.failure summary').click();")
        time.sleep(1.5)  # a poll later: the page redrew, the failure stays open
        script = """
            const d = document.querySelector('details.failure');
            return JSON.stringify({open: d.open, message: d.querySelector('pre.failure-message').innerText,
                                   traceback: d.querySelector('pre.traceback').innerText});
        """
        seen = json.loads(browser.execute_script(script))
        keep_screenshot(browser, tmp_path, "dashboard-failure.png")
    assert seen["open"] is True
    first, where = seen["message"].splitlines()[:2]
    assert first == ERROR
    assert where.startswith("at ") and "in training_step (epoch 1, step 12)" in where
    assert seen["traceback"].startswith("Traceback (most recent call last):")
    assert seen["traceback"].rstrip().endswith(ERROR)
