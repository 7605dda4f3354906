"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through
the system chromedriver (nothing is downloaded). The page must follow a run live: it
appears as running, its chart grows, and it turns completed.

Skipped with the reason when Selenium, chromium or chromedriver is missing
(scripts/install.sh installs them). Screenshots are kept under the test's tmp path; set
DASHBOARD_SCREENSHOTS=DIR to keep them there too (docs/dashboard.png comes from it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.dashboard import DashboardServer
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import COMPLETED, MetricPoint
from tests.dashboard.support import add_event, run_state, running_dashboard, wait_for
from tests.dashboard.test_security import states

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
from selenium.webdriver.chrome.service import Service  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
TRAIN = Path(__file__).with_name("train_tiny.py")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium at 1400x1000, its profile in the test's tmp dir."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The page redraws every second, so elements are read inside the page in one script call
# (an element found by one call can be replaced before the next).


def status_of(driver: Any, selector: str) -> str:
    """The ``data-status`` of the first badge matching ``selector`` ("" while there is none)."""
    script = "const b = document.querySelector(arguments[0]); return b ? b.dataset.status : '';"
    return str(driver.execute_script(script, selector))


def badge(driver: Any, run_id: str) -> str:
    """The status badge of ``run_id`` on the runs page ("" while it is not listed)."""
    return status_of(driver, f'tr[data-run="{run_id}"] .badge')


def chart_points(driver: Any) -> int:
    """How many points the run page's charts draw together."""
    script = (
        "return Array.from(document.querySelectorAll('svg.chart-svg'))"
        ".reduce((n, svg) => n + Number(svg.dataset.points || 0), 0);"
    )
    return int(driver.execute_script(script))


def keep_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot under the test's tmp path (and DASHBOARD_SCREENSHOTS, if set)."""
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    extra = os.environ.get("DASHBOARD_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(extra) / name)
    return shot


def follow(driver: Any, server: DashboardServer, run_id: str, tmp_path: Path, *, timeout: float) -> None:
    """Watch ``run_id`` on the runs page and its own page: running, growing, completed."""
    driver.get(server.url)
    wait_for(lambda: badge(driver, run_id) == "running", timeout=timeout, what=f"{run_id} listed as running")
    keep_screenshot(driver, tmp_path, "dashboard-runs.png")
    driver.execute_script(
        "document.querySelector(arguments[0]).click();", f'tr[data-run="{run_id}"] a.run-link'
    )
    wait_for(lambda: driver.current_url.endswith(f"/run/{run_id}"), timeout=timeout, what="the run's page")
    wait_for(lambda: chart_points(driver) > 0, timeout=timeout, what="a chart with points")
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(driver, ".run-head .badge")
        samples.append((status, chart_points(driver)))
        if status == COMPLETED:
            break
        time.sleep(0.3)
    assert samples[-1][0] == COMPLETED, samples
    during = [points for status, points in samples if status == "running"]
    assert during, f"never seen running on its page: {samples}"
    assert samples[-1][1] > min(during), f"the chart did not grow while it ran: {samples}"
    time.sleep(1.5)  # one more poll, so the screenshot shows the last points too
    keep_screenshot(driver, tmp_path, "dashboard-run.png")


def test_the_page_follows_a_run_written_to_the_store(
    browser: Any, isolated_env: Path, tmp_path: Path
) -> None:
    """A writer thread stands in for a training (curves written over ~6 s, then the end)."""
    path = isolated_env / "outbox.sqlite3"
    outbox = Outbox(path)
    started = time.time()

    def write() -> None:
        for step in range(1, 31):
            state = run_state("live-run", started=started, step=step, total_steps=30, updated_at=time.time())
            outbox.save_run(state, [MetricPoint("loss", float(step), 1.0 / step)])
            time.sleep(0.2)
        final = run_state("live-run", status=COMPLETED, started=started, step=30, total_steps=30)
        outbox.save_run(final, [MetricPoint("val_loss", 1.0, 0.1, "epoch")])

    outbox.save_run(
        run_state("live-run", started=started, step=0, total_steps=30), [MetricPoint("loss", 0.0, 1.0)]
    )
    writer = threading.Thread(target=write, daemon=True)
    with running_dashboard(path) as server:
        writer.start()
        follow(browser, server, "live-run", tmp_path, timeout=60)
    writer.join(30)
    outbox.close()


def test_the_page_follows_a_real_lightning_training(browser: Any, isolated_env: Path, tmp_path: Path) -> None:
    """A real tiny Lightning training with AFSNotify in its own process, sharing the state dir."""
    pytest.importorskip("lightning.pytorch")
    isolated_env.mkdir(parents=True, exist_ok=True)
    log = (tmp_path / "training.log").open("w")
    training = subprocess.Popen(
        [sys.executable, str(TRAIN), "browser-run", "6", "0.25"],
        env={**os.environ, "AFS_STATE_DIR": str(isolated_env), "DESKTOP_NOTIFICATIONS_ENABLED": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    path = isolated_env / "outbox.sqlite3"
    try:

        def run_row() -> bool:
            try:
                with Outbox(path, read_only=True) as outbox:
                    return outbox.run("browser-run") is not None
            except Exception:  # not created yet
                return False

        wait_for(lambda: run_row() or training.poll() is not None, timeout=300, what="the training to start")
        if not run_row():
            pytest.skip(
                "the training wrote no row in the runs table: the tracker does not persist runs here yet"
            )
        with running_dashboard(path) as server:
            follow(browser, server, "browser-run", tmp_path, timeout=180)
        training.wait(timeout=120)  # it delivers what is queued, then exits
    finally:
        if training.poll() is None:
            training.terminate()
        training.wait(timeout=60)
        log.close()
    assert training.returncode == 0, (tmp_path / "training.log").read_text()[-2000:]


def test_the_retry_button_queues_a_dead_message_again(
    browser: Any, isolated_env: Path, tmp_path: Path
) -> None:
    """The page's own script sends the retry with its CSRF token, and the file changes."""
    path = isolated_env / "outbox.sqlite3"
    outbox = Outbox(path)
    event = add_event(outbox, "run-1", "checkpoint saved", ["email"])
    outbox.mark_dead(event.id, "email", "SMTP 535 authentication failed")
    outbox.close()
    with running_dashboard(path) as server:
        browser.get(server.url + "outbox")
        click = "const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b;"
        selector = f'tr[data-event="{event.id}"] button.retry'
        wait_for(lambda: browser.execute_script(click, selector), timeout=60, what="the Retry button")
        wait_for(
            lambda: states(path)[event.id, "email"] == "pending", timeout=30, what="the message queued again"
        )
        note = wait_for(
            lambda: browser.execute_script("return document.getElementById('retry-note').textContent"),
            what="the page's note",
        )
        keep_screenshot(browser, tmp_path, "dashboard-outbox.png")
    assert "1 message(s) queued again" in note


def test_the_runs_page_shows_each_outcome(browser: Any, isolated_env: Path, tmp_path: Path) -> None:
    """Real tiny Lightning trainings that end each their own way, in one history: each row's
    badge shows its outcome's words and colour, NaN runs are marked and their "Latest" says
    NaN, sub-second durations read "0.3 s", and the status filter lists by outcome."""
    pytest.importorskip("lightning.pytorch")
    import signal

    from afs_callbacks.channels.telegram import TelegramNotifier
    from afs_callbacks.outcome import Outcome
    from afs_callbacks.testing import LoopbackReceiver
    from tests.cards.services import FakeTelegram
    from tests.integrations.test_outcomes import CASES, Case, train

    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    pace, TelegramNotifier.min_interval = TelegramNotifier.min_interval, 0.0
    # A longer run that diverges in its second epoch: a curve before the NaN, and its mark.
    diverging = Case(
        Outcome.COMPLETED_WITH_WARNINGS,
        "",
        script={"inf_from": 13},
        trainer={"max_epochs": 3, "limit_train_batches": 8, "log_every_n_steps": 2},
    )
    cases = [CASES[name] for name in ("planned_end", "early_stopping", "stop_on_nan", "crash", "sigterm")]
    runs: dict[str, Outcome] = {}
    try:
        for n, case in enumerate([*cases, diverging]):
            name = f"run-{n}"
            with LoopbackReceiver() as receiver:
                bot_api = FakeTelegram("123456789:AAHcardTOKENabcdefghijklmnopqrstuvw")
                try:
                    runs[last := train(case, tmp_path / name, receiver, bot_api)] = case.outcome
                finally:
                    bot_api.close()
    finally:
        TelegramNotifier.min_interval = pace
        for number, handler in handlers.items():
            signal.signal(number, handler)

    rows_script = """
        return Array.from(document.querySelectorAll('#runs-body tr[data-run]')).map((tr) => {
          const b = tr.querySelector('.badge'), cells = tr.querySelectorAll('td');
          return {run: tr.dataset.run, status: b.dataset.status, text: b.textContent,
                  colour: getComputedStyle(b).backgroundColor, nan: !!tr.querySelector('.nan-mark'),
                  duration: cells[5].textContent, latest: cells[7].textContent};
        });"""
    with running_dashboard(isolated_env / "outbox.sqlite3") as server:
        browser.get(server.url)
        rows = wait_for(
            lambda: (found := browser.execute_script(rows_script)) and len(found) == len(runs) and found,
            timeout=60,
            what="every run listed",
        )
        keep_screenshot(browser, tmp_path, "dashboard-runs.png")
        for row in rows:
            outcome = runs[row["run"]]
            assert row["status"] == outcome.value and row["text"] == f"{outcome.icon} {outcome.label}", row
            red, green, blue = (outcome.colour >> 16) & 255, (outcome.colour >> 8) & 255, outcome.colour & 255
            assert row["colour"] == f"rgb({red}, {green}, {blue})", row
            assert re.fullmatch(r"0\.\d\d? s", row["duration"]), row  # sub-second runs: "0.3 s", not "0 s"
            diverged = outcome in (Outcome.STOPPED_ON_PROBLEM, Outcome.COMPLETED_WITH_WARNINGS)
            assert row["nan"] is diverged, row
            if diverged:
                assert row["latest"].endswith("NaN"), row  # the value, not a bare name
        # The status filter offers each outcome and lists only its runs.
        options = browser.execute_script(
            "return Array.from(document.querySelectorAll('#f-status option')).map((o) => o.value);"
        )
        assert [value for value in options if value] == [
            "running",
            "stalled",
            *(outcome.value for outcome in Outcome),
        ]
        browser.execute_script(
            "const s = document.getElementById('f-status'); s.value = 'stopped_on_problem';"
            " s.dispatchEvent(new Event('change'));"
        )
        problem = [run for run, outcome in runs.items() if outcome is Outcome.STOPPED_ON_PROBLEM]
        wait_for(
            lambda: [row["run"] for row in browser.execute_script(rows_script)] == problem,
            timeout=30,
            what="only the run stopped on a problem",
        )
        # A diverged run's own page says what went wrong first, and where.
        browser.get(server.url + f"run/{last}")  # the diverging one
        note = wait_for(
            lambda: browser.execute_script(
                "const n = document.getElementById('run-nan'); return n && n.textContent;"
            ),
            timeout=30,
            what="the run's NaN note",
        )
        # Read every 2 steps on the reader thread: seen at 14, or a step or two later.
        assert re.fullmatch(
            r"First NaN/Inf: loss became Inf at step 13 \(epoch 2\), seen at step 1[4-6]", note
        )
        # Its metrics say NaN, and its loss chart marks the step where the loss went bad.
        shown = wait_for(
            lambda: browser.execute_script(
                "return Array.from(document.querySelectorAll('.metric')).map((m) => m.textContent);"
            ),
            timeout=30,
            what="the run's metrics",
        )
        assert [text.split()[0] for text in shown] == ["train_loss", "val_loss"], shown
        assert all(re.fullmatch(r"\S+ (NaN|-?Inf)", text) for text in shown), shown
        marks = browser.execute_script(
            "return Array.from(document.querySelectorAll('svg .nan-line')).map((l) => l.dataset.nan);"
        )
        assert marks == ["13"]
        time.sleep(1.5)  # one more poll: the charts are drawn at their final width
        keep_screenshot(browser, tmp_path, "dashboard.png")
