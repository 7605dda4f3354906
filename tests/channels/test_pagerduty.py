"""PagerDuty channel, end to end: manager -> outbox -> sender -> PagerDutyNotifier -> a loopback
server that validates and answers like the Events API v2 (202 + JSON, 400 with errors, 429)."""

from __future__ import annotations

import logging

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.pagerduty import (
    END_KEYS,
    INCIDENT_TYPES,
    RATE_LIMIT_BACKOFF,
    PagerDutyNotifier,
    dedup_key,
    ended_conditions,
)
from afs_callbacks.config import Env
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed

KEY = "R0UTINGkey1234567890abcdefABCDEF"


def events_api(request: ReceivedRequest) -> Reply:
    """The Events API v2's checks (documented field rules) and answers."""
    body = request.json()
    errors = []
    if body.get("routing_key") != KEY:
        errors.append("'routing_key' is invalid")
    if body.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid")
    if len(body.get("dedup_key", "")) > 255:
        errors.append("'dedup_key' is too long")
    if body.get("event_action") == "trigger":
        payload = body.get("payload", {})
        if not payload.get("summary") or len(payload["summary"]) > 1024:
            errors.append("'payload.summary' is missing or too long")
        if not payload.get("source"):
            errors.append("'payload.source' is missing")
        if payload.get("severity") not in ("critical", "error", "warning", "info"):
            errors.append("'payload.severity' is invalid")
    if errors:
        return Reply(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})
    return Reply(202, {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")})


@pytest.fixture
def api(receiver: LoopbackReceiver) -> LoopbackReceiver:
    receiver.responder = events_api
    return receiver


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager = support.manager


def channel(api: LoopbackReceiver, **options: object) -> PagerDutyNotifier:
    return PagerDutyNotifier(KEY, api_url=api.url("/v2/enqueue"), **options)  # type: ignore[arg-type]


def test_failure_triggers_an_incident(manager: NotificationManager, api: LoopbackReceiver) -> None:
    manager.register_handler("pagerduty", channel(api, source="gpu-node-7"))
    manager.notify(
        "NaN loss: bert-tiny",
        "loss became NaN at step 120",
        EventType.NAN_DETECTED,
        model="bert-tiny",
        run_id="run-7",
        metrics={"loss": float("nan"), "lr": 0.001},
    )
    assert flushed(manager) == ["delivered"]
    (request,) = api.wait_for(1)
    assert request.path == "/v2/enqueue"
    body = request.json()
    assert body["event_action"] == "trigger" and body["dedup_key"] == "afs:run-7:nan_detected"
    payload = body["payload"]
    assert payload["summary"] == "[run-7] NaN loss: bert-tiny"
    assert payload["severity"] == "error" and payload["source"] == "gpu-node-7"
    assert payload["component"] == "bert-tiny" and payload["group"] == "run-7"
    assert payload["class"] == "nan_detected"
    details = payload["custom_details"]
    assert details["message"] == "loss became NaN at step 120"
    assert details["metrics"] == {"loss": "nan", "lr": 0.001}  # JSON has no NaN


def test_repeats_share_one_incident_and_critical_is_critical(
    manager: NotificationManager, api: LoopbackReceiver
) -> None:
    manager.register_handler("pagerduty", channel(api))
    manager.notify("NaN 1", event_type=EventType.NAN_DETECTED, run_id="r")
    manager.notify("NaN 2", event_type=EventType.NAN_DETECTED, run_id="r")
    manager.notify("OOM", event_type=EventType.OUT_OF_MEMORY, run_id="r")
    assert flushed(manager) == ["delivered"] * 3
    bodies = [request.json() for request in api.wait_for(3)]
    assert [b["dedup_key"] for b in bodies] == ["afs:r:nan_detected"] * 2 + ["afs:r:out_of_memory"]
    assert bodies[2]["payload"]["severity"] == "critical"


def test_lower_levels_are_accepted_without_sending(
    manager: NotificationManager, api: LoopbackReceiver
) -> None:
    manager.register_handler("pagerduty", channel(api))
    manager.notify("epoch 3 done", event_type=EventType.EPOCH_COMPLETED, run_id="r")
    manager.notify("GPU memory 95%", event_type=EventType.GPU_MEMORY, run_id="r")
    assert flushed(manager) == ["delivered"] * 2
    assert api.requests == []


def test_completion_resolves_in_a_later_process(manager: NotificationManager, api: LoopbackReceiver) -> None:
    """The resolving channel is a fresh instance: it knows nothing the first one paged for,
    as in an ``afs-notify`` run after the training process died."""
    first = channel(api)
    first.send(NotificationEvent(EventType.NAN_DETECTED, "error", "NaN", context={"run_id": "run-9"}))
    api.wait_for(1)
    manager.register_handler("pagerduty", channel(api))
    manager.notify_training_completed("bert", "run-9", duration=60.0)
    assert flushed(manager) == ["delivered"]
    resolves = [r.json() for r in api.wait_for(1 + len(INCIDENT_TYPES | END_KEYS))[1:]]
    assert {r["event_action"] for r in resolves} == {"resolve"}
    assert {r["dedup_key"] for r in resolves} == {
        dedup_key("run-9", kind) for kind in INCIDENT_TYPES | END_KEYS
    }
    assert "afs:run-9:nan_detected" in {r["dedup_key"] for r in resolves}
    assert all(set(r) == {"routing_key", "event_action", "dedup_key"} for r in resolves)


def test_completion_also_resolves_custom_conditions_paged_here(api: LoopbackReceiver) -> None:
    pager = channel(api)
    pager.send(NotificationEvent(EventType.CUSTOM, "critical", "disk died", context={"run_id": "r2"}))
    result = pager.send(
        NotificationEvent(EventType.TRAINING_COMPLETED, "success", "done", context={"run_id": "r2"})
    )
    assert result.ok
    keys = {r.json()["dedup_key"] for r in api.wait_for(2 + len(INCIDENT_TYPES | END_KEYS))[1:]}
    assert "afs:r2:custom" in keys


def test_only_an_end_that_resolves_alerts_closes_incidents(api: LoopbackReceiver) -> None:
    """The end's outcome (``context["outcome"]``, the tracker's) decides: a NaN stop keeps
    the NaN's incident open and pages its own end; a run that completed with warnings
    (warning level) sends nothing; a later clean end of the same run id closes both."""
    pager = channel(api)
    nan = NotificationEvent(
        EventType.NAN_DETECTED, "error", "Inf loss at step 3: tiny", context={"run_id": "r4"}
    )
    stopped = NotificationEvent(
        EventType.TRAINING_COMPLETED,
        "error",
        "🛑 Training stopped on a problem (Inf loss at step 3): tiny",
        context={"run_id": "r4", "outcome": "stopped_on_problem"},
    )
    warned = NotificationEvent(
        EventType.TRAINING_COMPLETED,
        "warning",
        "⚠️ Training completed with warnings (Inf loss at step 3): tiny",
        context={"run_id": "r4", "outcome": "completed_with_warnings"},
    )
    assert ended_conditions(stopped) == frozenset() and ended_conditions(warned) == frozenset()
    assert all(pager.send(event).ok for event in (nan, stopped, warned))
    sent = [r.json() for r in api.wait_for(2)]
    assert [(b["event_action"], b["dedup_key"]) for b in sent] == [
        ("trigger", "afs:r4:nan_detected"),
        ("trigger", "afs:r4:training_completed"),
    ]
    assert sent[1]["payload"]["severity"] == "error"
    # An end stored before outcomes existed reads its type: completed, which resolves.
    clean = NotificationEvent(EventType.TRAINING_COMPLETED, "success", "done", context={"run_id": "r4"})
    assert ended_conditions(clean) is None
    assert channel(api).send(clean).ok  # a fresh process: the keys are deterministic
    resolves = {r.json()["dedup_key"] for r in api.wait_for(2 + len(INCIDENT_TYPES | END_KEYS))[2:]}
    assert {"afs:r4:nan_detected", "afs:r4:training_completed"} <= resolves


@pytest.mark.parametrize(
    ("event_type", "context", "expected"),
    [
        (EventType.TRAINING_RESUMED, {}, {"training_stalled", "training_interrupted"}),
        (EventType.EVALUATION_COMPLETED, {}, {"evaluation_failed"}),
        (EventType.GPU_MEMORY, {"resolved": True}, {"gpu_memory"}),
    ],
)
def test_recoveries_resolve_their_own_condition(
    api: LoopbackReceiver, event_type: EventType, context: dict, expected: set[str]
) -> None:
    event = NotificationEvent(event_type, "info", "recovered", context={"run_id": "r3", **context})
    assert channel(api).send(event).ok
    sent = api.wait_for(len(expected))
    assert {r.json()["dedup_key"] for r in sent} == {f"afs:r3:{kind}" for kind in expected}
    assert ended_conditions(NotificationEvent(EventType.EPOCH_COMPLETED, "info", "x")) == frozenset()


def test_long_run_ids_and_summaries_fit_the_limits(
    manager: NotificationManager, api: LoopbackReceiver
) -> None:
    manager.register_handler("pagerduty", channel(api))
    manager.notify("x" * 3000, event_type=EventType.TRAINING_FAILED, run_id="r" * 400)
    assert flushed(manager) == ["delivered"]  # the loopback API refuses over-long fields
    body = api.wait_for(1)[0].json()
    assert len(body["dedup_key"]) <= 255 and body["dedup_key"].startswith("afs:sha256-")
    assert len(body["payload"]["summary"]) == 1024
    assert dedup_key("r" * 400, EventType.TRAINING_FAILED) == body["dedup_key"]  # stable


def test_event_without_run_gets_its_own_incident(api: LoopbackReceiver) -> None:
    event = NotificationEvent(EventType.ERROR_OCCURRED, "error", "boom")
    assert channel(api).send(event).ok
    assert api.wait_for(1)[0].json()["dedup_key"] == f"afs:event:{event.id}"


def test_rate_limit_backs_off_at_least_30_seconds(api: LoopbackReceiver) -> None:
    api.reply(Reply(429, b""))
    result = channel(api).send(NotificationEvent(EventType.TRAINING_FAILED, "error", "t"))
    assert result.outcome is Outcome.RETRY and result.retry_after == RATE_LIMIT_BACKOFF == 30.0


def test_429_and_5xx_retry_then_deliver(manager: NotificationManager, api: LoopbackReceiver) -> None:
    api.reply(Reply(429, b""), Reply(500, {"status": "error"}))
    manager.register_handler("pagerduty", channel(api, rate_limit_backoff=0.01))
    manager.notify("t", event_type=EventType.TRAINING_FAILED, run_id="r")
    api.wait_for(3)
    manager.flush(5)
    (delivery,) = manager.outbox.history(channel="pagerduty")[0].deliveries
    assert delivery.state == "delivered" and delivery.attempts == 3


def test_invalid_event_is_permanent(manager: NotificationManager, api: LoopbackReceiver) -> None:
    manager.register_handler(
        "pagerduty", PagerDutyNotifier("WrongKey0000000000000000000000ab", api_url=api.url("/"))
    )
    manager.notify("t", event_type=EventType.TRAINING_FAILED, run_id="r")
    manager.flush(5)
    (delivery,) = manager.outbox.history()[0].deliveries
    assert delivery.state == "dead" and "routing_key" in (delivery.last_error or "")


def test_from_env_and_validation() -> None:
    assert PagerDutyNotifier.from_env(Env({}, env_file=False)) is None
    built = PagerDutyNotifier.from_env(
        Env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_SOURCE": "cluster-a"}, env_file=False)
    )
    assert built is not None and built.api_url == "https://events.pagerduty.com/v2/enqueue"
    assert built.source == "cluster-a"
    with pytest.raises(ConfigurationError) as caught:
        PagerDutyNotifier.from_env(Env({"PAGERDUTY_ROUTING_KEY": KEY + " oops"}, env_file=False))
    assert KEY not in str(caught.value)
    with pytest.raises(ConfigurationError, match="PAGERDUTY_API_URL"):
        PagerDutyNotifier.from_env(
            Env({"PAGERDUTY_ROUTING_KEY": KEY, "PAGERDUTY_API_URL": "http://pd.example.org/"}, env_file=False)
        )


def test_routing_key_never_leaks(
    manager: NotificationManager, api: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.reply(Reply(502, f"bad gateway for routing_key={KEY}".encode()))
    pager = channel(api)
    manager.register_handler("pagerduty", pager, min_level=NotificationLevel.INFO)
    manager.notify("t", "m", EventType.TRAINING_FAILED, run_id="r")
    manager.flush(5)
    manager.flush(5)
    assert manager.outbox.history()[0].deliveries[0].state == "delivered"
    manager.close(timeout=1)
    assert_not_shown((caplog.text, repr(pager), pager.describe(), str(manager.status())), KEY)
    assert_not_stored(manager.state_dir, KEY, pattern=OUTBOX_FILES)
    assert pager.describe().endswith("key ***CDEF")
