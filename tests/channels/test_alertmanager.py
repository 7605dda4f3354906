"""Alertmanager channel against a REAL Alertmanager (Debian's prometheus-alertmanager) on
loopback: manager -> outbox -> sender -> AlertmanagerNotifier -> Alertmanager -> its webhook
receiver (a LoopbackReceiver). Answers Alertmanager cannot be made to give (a 503) come from
a LoopbackReceiver."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.alertmanager import AlertmanagerNotifier, alert_name, parse_labels
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed
from tests.helpers.services import eventually, free_port, start_alertmanager


@pytest.fixture
def hook(receiver: LoopbackReceiver) -> LoopbackReceiver:
    """Alertmanager's webhook receiver."""
    return receiver


@pytest.fixture
def alertmanager(tmp_path: Path, hook: LoopbackReceiver) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, routing everything to ``hook`` fast."""
    service = start_alertmanager(tmp_path / "am", hook.url("/am-webhook"))
    try:
        yield service.url
    finally:
        service.stop()


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
        "team": "ml",
    }  # no host: the same run on another host or rank is the same alert
    assert alert["annotations"]["host"] == socket.gethostname()
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
    # It first asks which of the run's alerts fire (to keep them firing too), then posts.
    get, post = loopback_am.wait_for(2)
    assert (get.method, post.method) == ("GET", "POST")
    (alert,) = post.json()
    ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    assert ends >= before + timedelta(seconds=3599)
    assert alert["labels"]["alertname"] == "TrainingFailed"
    # Re-sent with that same endsAt while this process lives; nobody extends it after.
    assert channel.firing == [alert["labels"]]
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


# How a run ended decides its alerts (the outcome contract) --------------------------------
# Until the tracker puts context["outcome"] on every end event (the "outcome" change), these
# tests pass the outcome in the event's context explicitly, as the tracker will.


def end_event(
    outcome: str,
    run_id: str = "r",
    event_type: EventType = EventType.TRAINING_COMPLETED,
    level: str = "success",
) -> NotificationEvent:
    return NotificationEvent(
        event_type,
        level,
        f"bert: {outcome}",
        "",
        context={"run_id": run_id, "model": "bert", "outcome": outcome},
    )


@pytest.mark.slow
def test_a_nan_stop_keeps_the_nan_alert_firing_and_it_reaches_the_receiver(
    manager: NotificationManager, alertmanager: str, hook: LoopbackReceiver
) -> None:
    """The NaN and the run's end are posted together (issue #21): the end no longer
    resolves the NaN, so it outlives Alertmanager's group_wait and reaches the receiver."""
    channel = AlertmanagerNotifier(alertmanager, failed_ttl=3600.0)
    manager.register_handler("alertmanager", channel)
    manager.notify(
        "NaN loss: bert", "loss became NaN at step 5", EventType.NAN_DETECTED, model="bert", run_id="nan-1"
    )
    manager.notify(
        "Training stopped after NaN/Inf: bert",
        event_type=EventType.TRAINING_COMPLETED,
        level="error",
        model="bert",
        run_id="nan-1",
        outcome="stopped_on_problem",
    )
    assert flushed(manager) == ["delivered", "delivered"]
    names = {alert["labels"]["alertname"]: alert for alert in listed(alertmanager, "nan-1")}
    assert set(names) == {"TrainingNaN", "TrainingStoppedOnProblem"}
    for alert in names.values():  # nobody will re-post them once the process is gone
        ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
        assert ends > datetime.now(timezone.utc) + timedelta(minutes=50)
    assert names["TrainingStoppedOnProblem"]["annotations"]["outcome"] == "stopped on a problem"
    firing = hook.wait_for(
        predicate=lambda r: (
            webhook_says("firing", "nan-1")(r)
            and json.loads(r.body)["commonLabels"].get("alertname") == "TrainingNaN"
        )
    )
    assert json.loads(firing[0].body)["alerts"][0]["annotations"]["summary"] == "NaN loss: bert"


@pytest.mark.parametrize(
    ("outcome", "resolves"),
    [
        ("completed", True),
        ("stopped_early", True),
        ("pruned", True),
        ("stopped_by_command", True),
        ("completed_with_warnings", False),
        ("stopped_on_problem", False),
        ("stopped_by_rule", False),
        ("failed", False),
        ("interrupted", False),
        ("preempted", False),
        ("killed", False),
    ],
)
def test_only_a_clean_end_resolves_the_runs_alerts(
    outcome: str, resolves: bool, receiver: LoopbackReceiver
) -> None:
    nan = {
        "labels": {"alertname": "TrainingNaN", "event_type": "nan_detected", "run_id": "r"},
        "annotations": {"summary": "NaN"},
        "startsAt": "2026-01-01T00:00:00.000Z",
    }
    receiver.responder = lambda request: Reply(200, [nan]) if request.method == "GET" else Reply(200, b"")
    # Above the end's own level: what is posted is the run's NaN alert alone.
    channel = AlertmanagerNotifier(receiver.url(), min_level=NotificationLevel.CRITICAL)
    assert channel.send(end_event(outcome)).ok
    posted = [request.json() for request in receiver.requests if request.method == "POST"]
    (alerts,) = posted
    ends = datetime.fromisoformat(alerts[0]["endsAt"].replace("Z", "+00:00"))
    if resolves:
        assert ends <= datetime.now(timezone.utc)
    else:
        assert ends > datetime.now(timezone.utc) + timedelta(hours=23)
    assert [a["labels"]["alertname"] for a in alerts] == ["TrainingNaN"]
    channel.close()


def test_the_end_of_a_run_fires_under_its_outcomes_name(loopback_am: LoopbackReceiver) -> None:
    channel = AlertmanagerNotifier(loopback_am.url())
    assert channel.send(end_event("killed", event_type=EventType.TRAINING_FAILED, level="critical")).ok
    (post,) = [request for request in loopback_am.requests if request.method == "POST"]
    (alert,) = post.json()
    assert alert["labels"]["alertname"] == "TrainingKilled"
    assert alert["labels"]["severity"] == "critical"
    # A later alert of that run, from this process, lives as long as the end's.
    assert channel.send(NotificationEvent(EventType.NAN_DETECTED, "error", "NaN", context={"run_id": "r"})).ok
    later = [request for request in loopback_am.requests if request.method == "POST"][-1].json()[0]
    assert later["endsAt"] == alert["endsAt"]
    channel.close()


# Labels: one run, one alert ----------------------------------------------------------------


@pytest.mark.slow
def test_the_same_condition_from_two_hosts_and_two_epochs_is_one_alert(
    manager: NotificationManager, alertmanager: str
) -> None:
    # Resolving at once: the hold before a resolution is the min_firing test's.
    manager.register_handler("alertmanager", AlertmanagerNotifier(alertmanager, min_firing=0.0))
    for host, rank in (("node-a", 0), ("node-b", 3)):
        manager.notify(
            "NaN", event_type=EventType.NAN_DETECTED, run_id="one", model="bert", host=host, rank=rank
        )
    for epoch in (2, 3):  # the tracker keys each degradation by epoch and step
        manager.notify(
            "val_loss worse",
            event_type=EventType.LOSS_DEGRADED,
            run_id="one",
            model="bert",
            key=f"val_loss-{epoch}-{epoch * 10}",
        )
    manager.flush(5)
    names = sorted(alert["labels"]["alertname"] for alert in listed(alertmanager, "one"))
    assert names == ["TrainingLossDegraded", "TrainingNaN"]
    manager.notify("val_loss better", event_type=EventType.LOSS_IMPROVED, run_id="one", key="val_loss-4-40")
    manager.flush(5)
    assert [alert["labels"]["alertname"] for alert in listed(alertmanager, "one")] == ["TrainingNaN"]


def test_the_description_leads_with_the_error(loopback_am: LoopbackReceiver) -> None:
    frames = "\n".join(
        f'  File "/site-packages/lightning/loops/x{i}.py", line {i}, in run\n    ^^^^^^' for i in range(900)
    )
    event = NotificationEvent(
        EventType.TRAINING_FAILED,
        "error",
        "Training failed: bert",
        "Traceback (most recent call last):\n" + frames + "\nRuntimeError: CUDA error: device-side assert",
        context={
            "run_id": "r",
            "error_type": "RuntimeError",
            "error": "RuntimeError: CUDA error: device-side assert",
        },
    )
    channel = AlertmanagerNotifier(loopback_am.url())
    assert channel.send(event).ok
    (alert,) = next(request for request in loopback_am.requests if request.method == "POST").json()
    description = alert["annotations"]["description"]
    assert description.splitlines()[0] == "RuntimeError: CUDA error: device-side assert"
    assert len(description) <= 8192
    assert alert["annotations"]["error"] == "RuntimeError: CUDA error: device-side assert"
    channel.close()


# An HA cluster: every peer gets every alert ----------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, hook: LoopbackReceiver) -> Iterator[list[str]]:
    """Two real Alertmanagers gossiping as one HA cluster, both routing to ``hook``."""
    first, second = free_port(), free_port()
    peers = [
        start_alertmanager(tmp_path / "am0", hook.url("/am-webhook"), cluster_port=first, peers=[second])
    ]
    try:
        peers.append(
            start_alertmanager(tmp_path / "am1", hook.url("/am-webhook"), cluster_port=second, peers=[first])
        )
        eventually(
            lambda: all(
                len(requests.get(p.url + "/api/v2/status", timeout=2).json()["cluster"]["peers"]) == 2
                for p in peers
            ),
            what="the two peers see each other",
        )
        yield [p.url for p in peers]
    finally:
        for peer in peers:
            peer.stop()


@pytest.mark.slow
def test_every_peer_of_a_cluster_gets_every_alert(
    cluster: list[str], hook: LoopbackReceiver, tmp_path: Path
) -> None:
    env = Env(
        {
            "ALERTMANAGER_URL": ",".join(cluster),
            "ALERTMANAGER_MIN_FIRING": "0",  # resolving at once: the hold is tested above
            "AFS_STATE_DIR": str(tmp_path / "state"),
            "AFS_CONSOLE": "never",
        },
        env_file=False,
    )
    manager = NotificationManager.from_env(env, strict=True)
    channel = manager.handlers["alertmanager"]
    assert isinstance(channel, AlertmanagerNotifier) and channel.peers == tuple(cluster)
    try:
        assert channel.check().ok
        manager.notify("NaN loss: bert", event_type=EventType.NAN_DETECTED, run_id="ha-1", model="bert")
        manager.notify("stalled", event_type=EventType.TRAINING_STALLED, run_id="ha-1", model="bert")
        assert flushed(manager) == ["delivered", "delivered"]
        for peer in cluster:  # each peer was posted to: neither depends on gossip
            assert sorted(a["labels"]["alertname"] for a in listed(peer, "ha-1")) == [
                "TrainingNaN",
                "TrainingStalled",
            ]
        hook.wait_for(2, predicate=webhook_says("firing", "ha-1"))
        manager.notify_training_completed("bert", "ha-1")
        manager.flush(5)
        for peer in cluster:
            assert listed(peer, "ha-1") == []
    finally:
        manager.close(timeout=1)


def test_a_peer_down_still_delivers_and_gets_the_alert_when_back(receiver: LoopbackReceiver) -> None:
    with LoopbackReceiver(responder=lambda r: Reply(200, []) if r.method == "GET" else Reply(200, b"")) as up:
        receiver.reply(Reply(503, b"down"), Reply(503, b"down"))
        receiver.responder = lambda r: Reply(200, []) if r.method == "GET" else Reply(200, b"")
        channel = AlertmanagerNotifier(
            [up.url(), receiver.url()], resend_interval=0.2, resolve_timeout=1.0, min_firing=0.0
        )
        result = channel.send(
            NotificationEvent(EventType.NAN_DETECTED, "error", "NaN", context={"run_id": "r"})
        )
        assert result.ok and "1 of 2 peers" in result.detail
        # The re-post reaches the peer that was down.
        receiver.wait_for(predicate=lambda r: r.method == "POST" and r.status == 200)
        # Resolving while it is down again: resolved on the other at once, then told again.
        receiver.reply(Reply(503, b"down"))
        result = channel.send(
            NotificationEvent(
                EventType.TRAINING_COMPLETED,
                "success",
                "done",
                context={"run_id": "r", "outcome": "completed"},
            )
        )
        assert result.ok and channel.firing == []
        resolution = [r for r in up.requests if r.method == "POST"][-1].json()[0]
        assert resolution["endsAt"] <= now_text()
        again = receiver.wait_for(
            predicate=lambda r: r.method == "POST" and r.status == 200 and r.json()[0] == resolution
        )
        assert again  # the same resolution, to the peer that missed it
        channel.close()


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_every_peer_down_is_retried(receiver: LoopbackReceiver) -> None:
    with LoopbackReceiver(default=Reply(502, b"bad gateway")) as other:
        receiver.default = Reply(503, b"unavailable")
        channel = AlertmanagerNotifier(f"{receiver.url()}, {other.url()}")
        result = channel.send(
            NotificationEvent(EventType.NAN_DETECTED, "error", "NaN", context={"run_id": "r"})
        )
        assert result.outcome.value == "retry"
        assert f"127.0.0.1:{receiver.port}" in result.detail and f"127.0.0.1:{other.port}" in result.detail
        channel.close()
