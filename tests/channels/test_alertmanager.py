"""Alertmanager channel against a REAL Alertmanager (Debian's prometheus-alertmanager) on
loopback: manager -> outbox -> sender -> AlertmanagerNotifier -> Alertmanager -> its webhook
receiver (a LoopbackReceiver). Answers Alertmanager cannot be made to give (a 503) come from
a LoopbackReceiver."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from afs_callbacks import EventType, NotificationEvent
from afs_callbacks.channels.alertmanager import AlertmanagerNotifier, alert_name, parse_labels
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy (bounded); return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def hook(receiver: LoopbackReceiver) -> LoopbackReceiver:
    """Alertmanager's webhook receiver."""
    return receiver


@pytest.fixture
def alertmanager(tmp_path: Path, hook: LoopbackReceiver) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, routing everything to ``hook`` fast."""
    if BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (CI: apt-get install prometheus-alertmanager)")
    config = tmp_path / "am.yml"
    config.write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: ['alertname', 'run_id']\n"
        "  group_wait: 100ms\n"
        "  group_interval: 300ms\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: {hook.url('/am-webhook')}\n"
        "        send_resolved: true\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError("alertmanager exited:\n" + log_path.read_text())
        try:
            return requests.get(url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        eventually(ready)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager = support.manager


def listed(url: str, run_id: str) -> list[dict[str, Any]]:
    response = requests.get(url + "/api/v2/alerts", params={"filter": f'run_id="{run_id}"'}, timeout=5)
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def webhook_says(status: str, run_id: str) -> Callable[[ReceivedRequest], bool]:
    def match(request: ReceivedRequest) -> bool:
        body = json.loads(request.body)
        return body["status"] == status and body["commonLabels"].get("run_id") == run_id

    return match


def test_alert_fires_and_completion_resolves_it(
    manager: NotificationManager, alertmanager: str, hook: LoopbackReceiver
) -> None:
    channel = AlertmanagerNotifier(alertmanager, labels={"team": "ml"}, min_firing=0.0)
    assert channel.check().ok  # GET /-/ready
    manager.register_handler("alertmanager", channel)
    manager.notify(
        "NaN loss: bert-tiny",
        "loss became NaN at step 120",
        EventType.NAN_DETECTED,
        model="bert-tiny",
        run_id="run-1",
        metrics={"loss": float("nan")},
    )
    assert flushed(manager) == ["delivered"]

    (alert,) = listed(alertmanager, "run-1")
    assert alert["labels"] == {
        "alertname": "TrainingNaN",
        "event_type": "nan_detected",
        "severity": "error",
        "run_id": "run-1",
        "model": "bert-tiny",
        "host": socket.gethostname(),
        "team": "ml",
    }
    assert alert["status"]["state"] == "active"
    assert alert["annotations"]["summary"] == "NaN loss: bert-tiny"
    assert "Metrics: loss=NaN" in alert["annotations"]["description"]
    firing = hook.wait_for(predicate=webhook_says("firing", "run-1"))
    assert json.loads(firing[0].body)["alerts"][0]["labels"]["alertname"] == "TrainingNaN"
    assert channel.firing == [alert["labels"]]

    manager.notify_training_completed("bert-tiny", "run-1", duration=42.0)
    assert flushed(manager) == ["delivered", "delivered"]
    # Alertmanager v0.25 no longer lists an alert once its endsAt has passed (with any
    # active/silenced/inhibited filter); its receivers get a "resolved" notification.
    assert listed(alertmanager, "run-1") == []
    resolved = hook.wait_for(predicate=webhook_says("resolved", "run-1"))
    assert json.loads(resolved[0].body)["alerts"][0]["status"] == "resolved"
    assert channel.firing == []


def test_firing_alerts_are_reposted_while_the_process_lives(
    manager: NotificationManager, alertmanager: str
) -> None:
    channel = AlertmanagerNotifier(alertmanager, resend_interval=0.2, resolve_timeout=1.0)
    manager.register_handler("alertmanager", channel)
    manager.notify("stalled", event_type=EventType.TRAINING_STALLED, run_id="run-2")
    manager.flush(5)
    first = listed(alertmanager, "run-2")[0]["endsAt"]
    later = eventually(lambda: [a for a in listed(alertmanager, "run-2") if a["endsAt"] > first])
    assert later[0]["startsAt"] == listed(alertmanager, "run-2")[0]["startsAt"]
    channel.close()  # no more re-posts: the alert ends on its own within resolve_timeout
    eventually(lambda: listed(alertmanager, "run-2") == [])


def test_another_process_resolves_what_this_one_fired(
    manager: NotificationManager, alertmanager: str, hook: LoopbackReceiver, tmp_path: Path
) -> None:
    script = "\n".join(
        [
            "from afs_callbacks import NotificationManager, EventType",
            "from afs_callbacks.channels.alertmanager import AlertmanagerNotifier",
            f"m = NotificationManager({{'alertmanager': AlertmanagerNotifier({alertmanager!r})}})",
            "m.notify('GPU 0 at 97%', event_type=EventType.GPU_MEMORY, run_id='run-3', key='gpu0')",
            "m.notify('GPU 1 at 98%', event_type=EventType.GPU_MEMORY, run_id='run-3', key='gpu1')",
            "m.notify('NaN', event_type=EventType.NAN_DETECTED, run_id='run-3')",
            "assert m.close(timeout=10).ok",
        ]
    )
    env = {**os.environ, "AFS_STATE_DIR": str(tmp_path / "other"), "AFS_CONSOLE": "never"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    names = sorted(
        (a["labels"]["alertname"], a["labels"].get("key", "")) for a in listed(alertmanager, "run-3")
    )
    assert names == [("GPUMemoryHigh", "gpu0"), ("GPUMemoryHigh", "gpu1"), ("TrainingNaN", "")]
    # Alertmanager tells receivers of a resolution only if it told them of the firing.
    hook.wait_for(2, predicate=webhook_says("firing", "run-3"))

    channel = AlertmanagerNotifier(alertmanager, min_firing=0.0)  # held resolves: the test below
    manager.register_handler("alertmanager", channel)
    manager.notify(
        "GPU 0 back to normal", event_type=EventType.GPU_MEMORY, run_id="run-3", key="gpu0", resolved=True
    )
    manager.flush(5)
    names = sorted(
        (a["labels"]["alertname"], a["labels"].get("key", "")) for a in listed(alertmanager, "run-3")
    )
    assert names == [("GPUMemoryHigh", "gpu1"), ("TrainingNaN", "")]
    manager.notify_training_completed("bert", "run-3")
    manager.flush(5)
    assert listed(alertmanager, "run-3") == []
    hook.wait_for(predicate=webhook_says("resolved", "run-3"))


def test_a_nan_alert_the_run_ends_right_after_still_fires(
    manager: NotificationManager, alertmanager: str, hook: LoopbackReceiver
) -> None:
    """Issue 21: a run that goes NaN and ends within a second. The alert goes before the end
    (the run's order), and the end does not resolve it before it has fired ``min_firing``
    seconds: Alertmanager lists it and tells its receivers, and only then is it resolved."""
    channel = AlertmanagerNotifier(alertmanager, min_firing=4.0)
    manager.register_handler("alertmanager", channel)
    manager.notify_training_started("bert-tiny", "run-nan")
    manager.notify(
        "NaN/Inf val_loss: bert-tiny",
        "val_loss became NaN",
        EventType.NAN_DETECTED,
        model="bert-tiny",
        run_id="run-nan",
    )
    manager.notify_training_completed("bert-tiny", "run-nan", duration=0.4)

    # The started (below the alert level) and the alert are delivered; the end is held.
    def held_end() -> Any:
        ends = manager.outbox.history(run_id="run-nan", event_type="training_completed")
        return ends and "held: 1 alert(s) of the run fire at least 4 s" in (
            ends[0].deliveries[0].last_error or ""
        )

    eventually(held_end, timeout=10)
    states = {e.event.event_type: e.deliveries[0].state for e in manager.outbox.history(run_id="run-nan")}
    assert states[EventType.NAN_DETECTED] == "delivered"
    (alert,) = listed(alertmanager, "run-nan")
    assert alert["labels"]["alertname"] == "TrainingNaN" and alert["status"]["state"] == "active"
    hook.wait_for(predicate=webhook_says("firing", "run-nan"))
    # The sender sends the end again when the hold is over: the alert is resolved.
    hook.wait_for(predicate=webhook_says("resolved", "run-nan"), timeout=20)
    assert listed(alertmanager, "run-nan") == []
    mine = [r for r in hook.requests if json.loads(r.body)["commonLabels"].get("run_id") == "run-nan"]
    assert next(json.loads(r.body)["status"] for r in mine) == "firing"
    (end,) = manager.outbox.history(run_id="run-nan", event_type="training_completed")
    assert end.deliveries[0].state == "delivered"
    assert channel.firing == []


def test_failed_run_alert_outlives_the_process(loopback_am: LoopbackReceiver) -> None:
    channel = AlertmanagerNotifier(loopback_am.url(), failed_ttl=3600.0)
    before = datetime.now(timezone.utc)
    assert channel.send(
        NotificationEvent(EventType.TRAINING_FAILED, "error", "boom", context={"run_id": "r"})
    ).ok
    (alert,) = loopback_am.wait_for(1)[0].json()
    ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    assert ends >= before + timedelta(seconds=3599)
    assert channel.firing == []  # nobody will re-post it: it was given a long life instead
    channel.close()


@pytest.fixture
def loopback_am(receiver: LoopbackReceiver) -> LoopbackReceiver:
    """Answers like Alertmanager's API, holding nothing: GET lists no alerts, POST succeeds."""
    receiver.responder = lambda request: Reply(200, []) if request.method == "GET" else Reply(200, b"")
    return receiver


def test_below_alert_level_posts_nothing(loopback_am: LoopbackReceiver) -> None:
    channel = AlertmanagerNotifier(loopback_am.url())
    assert channel.send(NotificationEvent(EventType.EPOCH_COMPLETED, "info", "epoch 1")).ok
    assert loopback_am.requests == []


def test_5xx_is_retried_and_400_is_permanent(
    manager: NotificationManager, loopback_am: LoopbackReceiver
) -> None:
    loopback_am.reply(Reply(503, b"unavailable"), Reply(400, b'"invalid label set: invalid name \\"x-y\\""'))
    manager.register_handler("alertmanager", AlertmanagerNotifier(loopback_am.url()))
    manager.notify("stalled", event_type=EventType.TRAINING_STALLED, run_id="r")
    loopback_am.wait_for(2)
    manager.flush(5)
    (delivery,) = manager.outbox.history()[0].deliveries
    assert delivery.state == "dead" and delivery.attempts == 2
    assert "invalid label set" in (delivery.last_error or "")
    manager.close(timeout=1)


def test_credentials_in_the_url_never_leak(
    manager: NotificationManager, loopback_am: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "s3cretPassw0rdForAM"
    url = f"http://ops:{password}@127.0.0.1:{loopback_am.port}"
    loopback_am.reply(Reply(502, f"proxy error for {url}".encode()))
    channel = AlertmanagerNotifier(url)
    manager.register_handler("alertmanager", channel)
    manager.notify("NaN", event_type=EventType.NAN_DETECTED, run_id="r")
    manager.flush(5)
    manager.flush(5)
    requests_seen = loopback_am.wait_for(2)
    assert requests_seen[-1].headers["Authorization"].startswith("Basic ")
    manager.close(timeout=1)
    assert_not_shown((caplog.text, repr(channel), str(manager.status())), password)
    assert_not_stored(manager.state_dir, password, pattern=OUTBOX_FILES)


def test_channel_pickles_without_its_thread(loopback_am: LoopbackReceiver) -> None:
    channel = AlertmanagerNotifier(loopback_am.url(), resend_interval=30.0, resolve_timeout=60.0)
    assert channel.send(NotificationEvent(EventType.NAN_DETECTED, "error", "NaN", context={"run_id": "r"})).ok
    copy = pickle.loads(pickle.dumps(channel))  # what ddp_spawn does to callbacks
    assert copy.firing == [] and copy.alerts_url == channel.alerts_url
    channel.close()


@pytest.mark.parametrize(
    ("event_type", "name"),
    [
        (EventType.NAN_DETECTED, "TrainingNaN"),
        (EventType.TRAINING_STALLED, "TrainingStalled"),
        (EventType.GPU_MEMORY, "GPUMemoryHigh"),
        (EventType.EVALUATION_FAILED, "EvaluationFailed"),
        (EventType.LOSS_DEGRADED, "TrainingLossDegraded"),
    ],
)
def test_alert_names(event_type: EventType, name: str) -> None:
    assert alert_name(event_type) == name


def test_from_env() -> None:
    assert AlertmanagerNotifier.from_env(Env({}, env_file=False)) is None
    built = AlertmanagerNotifier.from_env(
        Env(
            {
                "ALERTMANAGER_URL": "http://127.0.0.1:9093/",
                "ALERTMANAGER_LABELS": "team=ml, env=prod",
                "ALERTMANAGER_RESEND_INTERVAL": "30",
                "ALERTMANAGER_RESOLVE_TIMEOUT": "120",
            },
            env_file=False,
        )
    )
    assert built is not None and built.labels == {"team": "ml", "env": "prod"}
    assert built.alerts_url == "http://127.0.0.1:9093/api/v2/alerts"
    assert (built.resend_interval, built.resolve_timeout) == (30.0, 120.0)
    with pytest.raises(ConfigurationError, match="ALERTMANAGER_RESOLVE_TIMEOUT"):
        AlertmanagerNotifier.from_env(
            Env(
                {"ALERTMANAGER_URL": "http://127.0.0.1:9093", "ALERTMANAGER_RESOLVE_TIMEOUT": "30"},
                env_file=False,
            )
        )
    with pytest.raises(ConfigurationError, match="ALERTMANAGER_LABELS"):
        parse_labels("team=ml,bad-name=x")
