"""The fleet, for real, on loopback: tiny trainings (train_fleet.py) write their state to the
store and to node exporter's textfile folder; Debian's node exporter (textfile collector)
and ``afs-notify exporter`` serve it; Debian's Prometheus scrapes both every second and
evaluates a test copy of deploy/prometheus/afs-callbacks.rules.yml (short thresholds),
sending alerts to two Debian Alertmanagers (an HA cluster) whose receiver is a loopback
webhook. Every gauge and every panel of deploy/grafana/afs-callbacks.json is queried
through Prometheus's HTTP API.

The one thing mocked: a GPU. No GPU here, so the peak GPU memory figure a GPU monitor
would put in a run's state is put in a state by hand (the rest of its path is real).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from afs_callbacks.config import Settings
from afs_callbacks.delivery.outbox import OUTBOX_FILE, Outbox
from afs_callbacks.manager import NotificationManager
from afs_callbacks.runstate import RunState
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.helpers.services import (
    Service,
    eventually,
    free_port,
    query,
    start_alertmanager,
    start_node_exporter,
    start_prometheus,
)

pytest.importorskip("torch")
pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "afs-callbacks.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "afs-callbacks.json"
TRAIN = Path(__file__).with_name("train_fleet.py")
#: The test copy's stall threshold (seconds without a step) instead of 15 minutes.
STALL_SECONDS = 2


@dataclass
class Fleet:
    """The services of this module and where the trainings write."""

    prometheus: Service
    alertmanagers: list[Service]
    webhook: LoopbackReceiver
    state_dir: Path
    textfile_dir: Path
    env: dict[str, str]
    channels: dict[str, LoopbackReceiver]

    def train(self, run_id: str, *args: str, timeout: float = 120.0, **env: str) -> subprocess.Popen[bytes]:
        """Start train_fleet.py for ``run_id`` (not waited for)."""
        return subprocess.Popen(
            [sys.executable, str(TRAIN), run_id, *args],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def values(self, expr: str) -> list[float]:
        """The values of an instant query."""
        return [float(sample["value"][1]) for sample in query(self.prometheus, expr)]

    def wait(self, expr: str, timeout: float = 30.0) -> list[float]:
        """The values of ``expr`` once it has some (Prometheus scrapes every second)."""
        return eventually(lambda: self.values(expr), timeout, expr)

    def wait_none(self, expr: str, timeout: float = 15.0) -> None:
        """Until ``expr`` has no value."""
        eventually(lambda: not self.values(expr), timeout, f"no {expr}")


def finish(process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr.decode(errors="replace")


def rules_for_tests(folder: Path) -> Path:
    """The shipped rules with the stall threshold in seconds and no pending time."""
    text = RULES.read_text()
    stall = text.index("- alert: TrainingStalled")
    body = text[stall : text.index("- alert:", stall + 1)]
    quick = body.replace("> 15 * 60", f"> {STALL_SECONDS}").replace("for: 1m", "for: 0s")
    assert quick != body, "the stall rule's threshold moved: update this test"
    path = folder / "afs-callbacks.rules.yml"
    path.write_text(text.replace(body, quick))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    state_dir, textfile_dir = root / "state", root / "textfile"
    textfile_dir.mkdir()
    services: list[Service] = []
    receivers = {
        "ok": LoopbackReceiver(),
        "dead": LoopbackReceiver(default=Reply(400, b"no such hook")),
        "failing": LoopbackReceiver(default=Reply(503, b"unavailable")),
    }
    webhook = LoopbackReceiver()
    try:
        first, second = free_port(), free_port()
        for index, (own, other) in enumerate(((first, second), (second, first))):
            services.append(
                start_alertmanager(
                    root / f"am{index}", webhook.url("/am"), cluster_port=own, peers=[other], group_wait="1s"
                )
            )
        alertmanagers = list(services)
        node = start_node_exporter(root / "node", textfile_dir)
        services.append(node)
        exporter_port = free_port()
        env = {
            **os.environ,
            "AFS_STATE_DIR": str(state_dir),
            "AFS_PROMETHEUS_TEXTFILE_DIR": str(textfile_dir),
            "AFS_CONSOLE": "never",
            "AFS_EXIT_FLUSH_TIMEOUT": "1",
            "AFS_RETRY_BASE": "0.2",
            "AFS_RETRY_CAP": "0.5",
            "FLEET_OK_URL": receivers["ok"].url("/hook"),
            "FLEET_DEAD_URL": receivers["dead"].url("/hook"),
            "FLEET_FAILING_URL": receivers["failing"].url("/hook"),
        }
        env.pop("ALERTMANAGER_URL", None)
        log = (root / "exporter.log").open("wb")
        exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "afs_callbacks",
                "exporter",
                "--listen",
                f"127.0.0.1:{exporter_port}",
                "--state-dir",
                str(state_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        services.append(
            Service("exporter", f"http://127.0.0.1:{exporter_port}", exporter, root / "exporter.log")
        )
        eventually(lambda: _answers(f"http://127.0.0.1:{exporter_port}/metrics"), 30, "the exporter")
        prometheus = start_prometheus(
            root / "prometheus",
            targets={"node": node.url.removeprefix("http://"), "afs": f"127.0.0.1:{exporter_port}"},
            rule_files=[rules_for_tests(root)],
            alertmanagers=[am.url.removeprefix("http://") for am in alertmanagers],
        )
        services.append(prometheus)
        yield Fleet(prometheus, alertmanagers, webhook, state_dir, textfile_dir, env, receivers)
    finally:
        for service in reversed(services):
            service.stop()
        for receiver in (*receivers.values(), webhook):
            receiver.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


RUN_GAUGES = (
    "afs_run_step",
    "afs_run_planned_steps",
    "afs_run_epoch",
    "afs_run_planned_epochs",
    "afs_run_progress_ratio",
    "afs_run_steps_per_second",
    "afs_run_samples_per_second",
    "afs_run_started_timestamp_seconds",
    "afs_run_last_step_timestamp_seconds",
    "afs_run_metric",
    "afs_run_monitor_value",
    "afs_run_monitor_best",
)
LIVE_GAUGES = ("afs_run_eta_seconds", "afs_run_heartbeat_timestamp_seconds")
OUTBOX_GAUGES = (
    "afs_outbox_up",
    "afs_outbox_deliveries",
    "afs_outbox_retrying",
    "afs_outbox_failing_since_timestamp_seconds",
    "afs_outbox_last_delivered_timestamp_seconds",
    "afs_outbox_last_dead_timestamp_seconds",
)


def test_a_run_is_scraped_from_the_textfile_and_the_exporter_and_marked_ended(fleet: Fleet) -> None:
    training = fleet.train("live-1", "--steps", "60", "--step-seconds", "0.15")
    try:
        for job in ("node", "afs"):  # while it runs: the live gauges, on both ways in
            for name in LIVE_GAUGES:
                fleet.wait(f'{name}{{run_id="live-1", job="{job}"}}', 40)
            fleet.wait(f'afs_run_info{{run_id="live-1", job="{job}", status="running", outcome=""}}')
    finally:
        finish(training)
    for job in ("node", "afs"):
        fleet.wait(f'afs_run_info{{run_id="live-1", job="{job}", status="ended", outcome="completed"}}')
        for name in (*RUN_GAUGES, "afs_run_ended_timestamp_seconds"):
            assert fleet.values(f'{name}{{run_id="live-1", job="{job}"}}'), f"{name} via {job}"
        # Marked ended: no heartbeat, no ETA, no "running" once the end was scraped.
        fleet.wait_none(f'afs_run_heartbeat_timestamp_seconds{{run_id="live-1", job="{job}"}}')
        assert not fleet.values(f'afs_run_eta_seconds{{run_id="live-1", job="{job}"}}')
        assert not fleet.values(f'afs_run_info{{run_id="live-1", job="{job}", status="running"}}')
        assert fleet.values(f'afs_run_step{{run_id="live-1", job="{job}"}}') == [60.0]
        assert fleet.values(f'afs_run_planned_steps{{run_id="live-1", job="{job}"}}') == [60.0]
        assert fleet.values(f'afs_run_epoch{{run_id="live-1", job="{job}"}}') == [2.0]
        assert fleet.values(f'afs_run_progress_ratio{{run_id="live-1", job="{job}"}}') == [1.0]
        (val_loss,) = fleet.values(f'afs_run_metric{{run_id="live-1", job="{job}", metric="val_loss"}}')
        monitored = f'afs_run_monitor_value{{run_id="live-1", job="{job}", metric="val_loss"}}'
        assert fleet.values(monitored) == [val_loss]
        best = f'afs_run_monitor_best{{run_id="live-1", job="{job}", metric="val_loss"}}'
        assert fleet.values(best)[0] <= val_loss

    # Delivery health: the ok webhook delivered, the 400 one died, the 503 one retries.
    for job in ("node", "afs"):
        for name in OUTBOX_GAUGES:
            fleet.wait(f'{name}{{job="{job}"}}')
        fleet.wait(f'afs_outbox_deliveries{{job="{job}", channel="webhook-ok", state="delivered"}} > 0')
        fleet.wait(f'afs_outbox_deliveries{{job="{job}", channel="webhook-dead", state="dead"}} > 0')
        fleet.wait(f'afs_outbox_retrying{{job="{job}", channel="webhook-failing"}} > 0')
    # The exporter reads the store at each scrape: the start and the end, both delivered.
    fleet.wait('afs_outbox_deliveries{job="afs", channel="webhook-ok", state="delivered"} >= 2')


def test_peak_gpu_memory_reaches_prometheus(fleet: Fleet) -> None:
    """A GPU cannot run here: the monitor's peak figure is put in the state by hand; the
    state then takes the real path (the manager's run hooks, the store, the textfile)."""
    settings = Settings(
        state_dir=fleet.state_dir, console="never", prometheus_textfile_dir=fleet.textfile_dir
    )
    manager = NotificationManager(settings=settings)
    now = time.time()
    state = RunState(
        run_id="gpu-1",
        model="tiny-linear",
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=now,
        updated_at=now,
        last_step_at=now,
        step=3,
        peak_gpu_memory=3.5 * 2**30,
    )
    manager.update_run(state)
    manager.update_run(replace(state, status="completed", ended_at=time.time()))
    manager.close(timeout=5)
    for job in ("node", "afs"):
        assert fleet.wait(f'afs_run_gpu_memory_peak_bytes{{run_id="gpu-1", job="{job}"}}') == [3.5 * 2**30]


def grafana_exprs() -> list[tuple[str, str, bool]]:
    """Every (panel title, query, instant) of the dashboard, Grafana's variables filled in
    the way an "All" selection fills them."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"], bool(target.get("instant"))))
    assert len(found) >= 15
    return found


def fill(expr: str) -> str:
    for variable in ("host", "run_id", "metric"):
        expr = expr.replace(f"${variable}", ".*")
    expr = expr.replace("$__range", "1h").replace("$__rate_interval", "1m").replace("$__interval", "15s")
    assert "$" not in expr, expr
    return expr


def test_every_dashboard_panel_and_variable_returns_data(fleet: Fleet) -> None:
    fleet.wait('afs_run_gpu_memory_peak_bytes{job="afs"}')  # the earlier tests' runs
    fleet.wait("afs_outbox_failing_since_timestamp_seconds")
    empty = []
    end = time.time()
    for title, expr, instant in grafana_exprs():
        if instant:
            result = query(fleet.prometheus, fill(expr))
        else:
            body = fleet.prometheus.get(
                "/api/v1/query_range", query=fill(expr), start=end - 300, end=end, step=1
            )
            assert body["status"] == "success", (title, body)
            result = body["data"]["result"]
        if not result:
            empty.append(f"{title}: {expr}")
    assert empty == [], "panels with no data:\n" + "\n".join(empty)
    board = json.loads(DASHBOARD.read_text())
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        values = fleet.prometheus.get(f"/api/v1/label/{match[2]}/values", **{"match[]": fill(match[1])})[
            "data"
        ]
        assert values, f"the {variable['name']} variable lists nothing"


def listed(am: Service, *matchers: str) -> list[dict[str, Any]]:
    """The alerts ``am`` holds for ``matchers``, once it holds some."""
    found: list[dict[str, Any]] = eventually(
        lambda: am.get("/api/v2/alerts", filter=list(matchers)), 20, am.url
    )
    return found


def _firing(request: ReceivedRequest, alertname: str, run_id: str) -> bool:
    body = json.loads(request.body)
    labels = body["commonLabels"]
    return (
        body["status"] == "firing" and labels.get("alertname") == alertname and labels.get("run_id") == run_id
    )


def test_the_stall_rule_fires_into_both_alertmanagers_and_reaches_the_receiver(fleet: Fleet) -> None:
    training = fleet.train("stall-1", "--steps", "20", "--stall-at", "8", "--stall-seconds", "12")
    try:
        eventually(
            lambda: query(
                fleet.prometheus, 'ALERTS{alertname="TrainingStalled", run_id="stall-1", alertstate="firing"}'
            ),
            40,
            "TrainingStalled firing in Prometheus",
        )
        for am in fleet.alertmanagers:  # Prometheus sends to every peer
            (alert,) = listed(am, 'alertname="TrainingStalled"', 'run_id="stall-1"')
            assert alert["labels"]["model"] == "tiny-linear" and alert["labels"]["severity"] == "error"
            assert "host" not in alert["labels"]  # one run, one alert, wherever it runs
            assert os.uname().nodename in alert["annotations"]["description"]
        (notice,) = fleet.webhook.wait_for(
            predicate=lambda r: _firing(r, "TrainingStalled", "stall-1"), timeout=20
        )
        assert "no training step for" in json.loads(notice.body)["alerts"][0]["annotations"]["summary"]
    finally:
        finish(training)
    # Steps again, then the end: the rule stops firing and the receiver hears it resolved.
    fleet.webhook.wait_for(
        predicate=lambda r: (
            json.loads(r.body)["status"] == "resolved"
            and json.loads(r.body)["commonLabels"].get("run_id") == "stall-1"
        ),
        timeout=40,
    )


def test_a_nan_runs_alert_reaches_both_alertmanagers_and_the_receiver(fleet: Fleet) -> None:
    urls = ",".join(am.url for am in fleet.alertmanagers)
    finish(fleet.train("nan-1", "--steps", "40", "--nan-at", "5", ALERTMANAGER_URL=urls))
    with Outbox(fleet.state_dir / OUTBOX_FILE, read_only=True) as outbox:
        (end,) = [
            entry.event
            for entry in outbox.history(run_id="nan-1")
            if entry.event.event_type.value == "training_completed"
        ]
    assert end.context["outcome"] == "stopped_on_problem", end.context
    for am in fleet.alertmanagers:  # the channel posts to every peer
        assert listed(am, 'alertname="TrainingNaN"', 'run_id="nan-1"')
    fleet.webhook.wait_for(predicate=lambda r: _firing(r, "TrainingNaN", "nan-1"), timeout=20)
