"""NotificationManager: never raises, never waits, routes, collapses storms, flushes, closes."""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import ClassVar

import pytest
from helpers.hook import Gate, HookChannel, event_ids, manager_for, wait_until

import afs_callbacks.channels as channels_module
import afs_callbacks.manager as manager_module
from afs_callbacks import (
    ConfigurationError,
    DeliveryResult,
    EventType,
    NotificationEvent,
    NotificationHandler,
    NotificationLevel,
    NotificationManager,
    Settings,
)
from afs_callbacks.channels.base import ChannelStatus
from afs_callbacks.config import Env
from afs_callbacks.delivery.outbox import DELIVERED, Outbox
from afs_callbacks.testing import CapturingHandler, LoopbackReceiver, Reply, capturing_manager

NEVER = {"retry_base": 1000.0, "retry_cap": 1000.0}


# notify() never raises -------------------------------------------------------------------


def test_bad_level_string_is_logged_and_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager, captured = capturing_manager(tmp_path)
    assert manager.notify("x", level="loud") is None
    assert manager.notify("x", event_type="meteor_strike") is None
    assert "notification dropped, bad arguments: unknown level 'loud'" in caplog.text
    assert manager.flush(5).pending == 0 and captured.events == []
    manager.close()


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_unserialisable_context_still_delivers(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path)
    sent = manager.notify("odd context", model=object(), tensor=Unprintable(), metrics={"loss": object()})
    assert sent is not None
    [got] = captured.wait_for()
    assert got.context["tensor"] == "<unprintable Unprintable>"
    assert got.model is not None and got.model.startswith("<object object")
    manager.close()


def test_unusable_state_dir_falls_back_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    handler = CapturingHandler()
    manager = NotificationManager({"capture": handler}, settings=Settings(state_dir=blocker, dedup_window=0))
    assert manager.notify("still delivered") is not None
    handler.wait_for()
    [line] = [r.getMessage() for r in caplog.records if "notification history" in r.getMessage()]
    assert str(blocker / "outbox.sqlite3") in line and "a file stands where its folder should be" in line
    assert "Set AFS_STATE_DIR" not in caplog.text and "Traceback" not in caplog.text
    assert manager.flush(5).pending == 0  # delivered from memory; flush does not raise
    manager.close()


class BrokenStatus(NotificationHandler):
    def send(self, event: NotificationEvent) -> DeliveryResult:
        return DeliveryResult.delivered()

    def status(self) -> ChannelStatus:
        raise OSError("no D-Bus session")


def test_a_handler_whose_status_raises_is_registered_as_unusable(tmp_path: Path) -> None:
    manager = manager_for(tmp_path, {"broken": BrokenStatus()})
    [status] = manager.status()
    assert not status.configured and "status check failed: no D-Bus session" in status.reason
    manager.close()


# notify() never waits on the network -------------------------------------------------------


def test_notify_returns_while_the_request_is_still_in_flight(tmp_path: Path) -> None:
    gate = Gate()
    with LoopbackReceiver(responder=gate) as hanging:
        manager = manager_for(tmp_path, {"hook": HookChannel(hanging.url("/hook"))})
        try:
            sent = manager.notify("training goes on")
            assert sent is not None
            # Stored by the writer thread moments later, visible to any other process.
            wait_until(lambda: [e.event.id for e in Outbox(manager.outbox.path).history()] == [sent.id])
            assert gate.arrived.wait(10)  # the request reached the server ...
            assert hanging.requests == []  # ... and has had no answer: notify did not wait
            assert manager.outbox.history()[0].deliveries[0].state in ("pending", "sending")
        finally:
            gate.open()
        assert manager.flush(10).pending == 0
        assert event_ids(hanging.wait_for(1)) == [sent.id]
        manager.close()


# flush() and close() ---------------------------------------------------------------------


def test_flush_ignores_backoff_tries_each_message_once_and_reports(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.default = Reply(503, "maintenance")
    manager = manager_for(tmp_path, {"hook": HookChannel(receiver.url("/hook"))}, **NEVER)
    sent = [manager.notify(f"m{index}") for index in range(3)]
    wait_until(
        lambda: [e.deliveries[0].attempts for e in manager.outbox.history() if e.deliveries] == [1, 1, 1],
        what="first attempts",
    )
    report = manager.flush(10)  # the next attempts are ~minutes away: flush tries them now
    assert (report.delivered, report.dead, report.pending) == (0, 0, 3)
    assert report.by_channel == {
        "hook": {"delivered": 0, "dead": 0, "pending": 3, "superseded": 0, "folded": 0}
    }
    assert not report.ok
    receiver.wait_for(6)
    assert sorted(event_ids(receiver.requests)) == sorted([e.id for e in sent if e] * 2)
    receiver.default = Reply(200)
    report = manager.flush(10)
    assert (report.delivered, report.pending, report.ok) == (3, 0, True)
    manager.close()


def test_flush_reports_pending_messages_of_channels_without_a_handler(tmp_path: Path) -> None:
    manager, _ = capturing_manager(tmp_path)
    manager.outbox.enqueue(NotificationEvent(EventType.TEST, NotificationLevel.INFO, "old"), ["slack"])
    report = manager.flush(5)
    assert report.by_channel["slack"]["pending"] == 1 and report.pending == 1
    manager.close()


def test_close_flushes_within_its_bound_and_leaves_the_rest_pending(tmp_path: Path) -> None:
    gate = Gate()
    with LoopbackReceiver(responder=gate) as hanging:
        manager = manager_for(tmp_path, {"hook": HookChannel(hanging.url("/hook"))})
        sent = [manager.notify(f"last words {index}") for index in range(3)]
        assert gate.arrived.wait(10)
        try:
            report = manager.close(timeout=0.3)
            assert report is not None
            assert (report.delivered, report.dead, report.pending) == (0, 0, 3)
            assert manager.close() is None  # closing twice is harmless
            rows = Outbox(manager.outbox.path).counts()["hook"]
            assert rows.get(DELIVERED, 0) == 0 and rows.get("dead", 0) == 0
        finally:
            gate.open()
        # The next manager on the same state directory delivers what was left.
        successor = manager_for(tmp_path, {"hook": HookChannel(hanging.url("/hook"))})
        assert successor.flush(15).pending == 0
        assert sorted(set(event_ids(hanging.requests))) == sorted(e.id for e in sent if e)
        successor.close()


def test_context_manager_closes(tmp_path: Path) -> None:
    handler = CapturingHandler()
    with NotificationManager({"capture": handler}, settings=Settings(state_dir=tmp_path)) as manager:
        manager.notify("inside")
    assert [e.title for e in handler.events] == ["inside"]


# routing ---------------------------------------------------------------------------------


def test_routing_by_minimum_level_and_event_types(tmp_path: Path) -> None:
    everything, errors, nan_only = CapturingHandler(), CapturingHandler(), CapturingHandler()
    manager = manager_for(tmp_path, {"everything": everything})
    manager.register_handler("errors", errors, min_level="error")
    manager.register_handler("nan_only", nan_only, events=["nan_detected"], min_level=NotificationLevel.INFO)
    manager.notify("started", event_type=EventType.TRAINING_STARTED)
    manager.notify("nan", event_type=EventType.NAN_DETECTED)
    manager.notify("oom", event_type=EventType.OUT_OF_MEMORY)
    manager.notify("quiet nan", event_type=EventType.NAN_DETECTED, level="warning")
    assert manager.flush(10).pending == 0
    assert sorted(e.title for e in everything.events) == ["nan", "oom", "quiet nan", "started"]
    assert sorted(e.title for e in errors.events) == ["nan", "oom"]
    assert sorted(e.title for e in nan_only.events) == ["nan", "quiet nan"]
    manager.close()


def test_unregistered_channel_keeps_its_messages_pending(tmp_path: Path) -> None:
    manager = manager_for(tmp_path, {"later": CapturingHandler([DeliveryResult.retry("busy")])}, **NEVER)
    manager.notify("wait for me")
    wait_until(lambda: [e.deliveries[0].attempts for e in manager.outbox.history()] == [1])
    manager.unregister_handler("later")
    assert "later" not in manager.handlers
    assert manager.outbox.counts()["later"] == {"pending": 1}
    manager.close()


# the console fallback --------------------------------------------------------------------


def test_console_shows_events_when_no_channel_is_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manager = NotificationManager(settings=Settings(state_dir=tmp_path))
    manager.notify("NaN loss", "loss became NaN", EventType.NAN_DETECTED, model="bert", run_id="r1")
    assert manager.flush(10).pending == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[afs] ERROR    nan_detected · NaN loss · model=bert run=r1")
    assert lines[0].endswith("loss became NaN")
    [delivery] = manager.outbox.history()[0].deliveries
    assert (delivery.channel, delivery.state) == ("console", DELIVERED)
    manager.close()


def test_console_never_and_always(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quiet = NotificationManager(settings=Settings(state_dir=tmp_path / "a", console="never"))
    quiet.notify("kept in history only")
    quiet.flush(5)
    assert quiet.outbox.history()[0].deliveries == ()
    quiet.close()
    handler = CapturingHandler()
    loud = NotificationManager(
        {"capture": handler}, settings=Settings(state_dir=tmp_path / "b", console="always")
    )
    loud.notify("both")
    assert loud.flush(10).pending == 0
    assert [e.title for e in handler.events] == ["both"]
    assert capsys.readouterr().err.count("[afs]") == 1
    loud.close()


# configuration through the environment ---------------------------------------------------


class ProbeChannel(NotificationHandler):
    """A channel configured by PROBE_URL, standing in for a real channel's from_env."""

    name: ClassVar[str] = "probe"

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, event: NotificationEvent) -> DeliveryResult:
        return DeliveryResult.delivered()

    @classmethod
    def from_env(cls, env: Env) -> ProbeChannel | None:
        url = env.url("PROBE_URL")
        return None if url is None else cls(url)


@pytest.fixture
def probe_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the probe channel the only one from_env knows (the real ones have their own tests)."""
    probe = channels_module.ChannelSpec("probe", f"{__name__}:ProbeChannel", "PROBE")
    registry = {"probe": probe, "console": channels_module.REGISTRY["console"]}
    monkeypatch.setattr(channels_module, "REGISTRY", registry)
    monkeypatch.setattr(manager_module, "REGISTRY", registry)


def test_from_env_registers_a_configured_channel_with_its_route(probe_only: None) -> None:
    manager = NotificationManager.from_env(
        {
            "PROBE_URL": "https://probe.example.com/x",
            "PROBE_MIN_LEVEL": "warning",
            "PROBE_EVENTS": "nan_detected",
        }
    )
    assert isinstance(manager.handlers["probe"], ProbeChannel)
    [(_, registration)] = manager.handlers_items()
    assert registration.route.min_level is NotificationLevel.WARNING
    assert registration.route.events == frozenset({EventType.NAN_DETECTED})
    assert NotificationManager.from_env({}).handlers == {}  # unset: not registered, no error


def test_from_env_bad_variable_is_logged_once_and_the_channel_skipped(
    probe_only: None, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"s3cret{uuid.uuid4().hex}"
    manager = NotificationManager.from_env({"PROBE_URL": f"http://probe.example.com/{secret}"})
    assert manager.handlers == {}
    [status] = manager.status()
    assert status.name == "probe" and not status.configured
    assert status.reason.startswith("PROBE_URL: plain http to a remote host")
    errors = [r for r in caplog.records if "probe channel not used" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert secret not in caplog.text and secret not in status.reason
    assert manager.notify("the run goes on") is not None
    manager.close()


def test_from_env_strict_raises(probe_only: None) -> None:
    with pytest.raises(ConfigurationError, match="PROBE_URL"):
        NotificationManager.from_env({"PROBE_URL": "not a url"}, strict=True)
    with pytest.raises(ConfigurationError, match="PROBE_MIN_LEVEL"):
        NotificationManager.from_env(
            {"AFS_STRICT": "1", "PROBE_URL": "https://p.example.com", "PROBE_MIN_LEVEL": "x"}
        )
    with pytest.raises(ConfigurationError, match="unknown channel") as raised:
        NotificationManager.from_env({}, channels=["pigeon"])
    assert raised.value.variable == "channels"  # the argument's name, not a CLI flag


def test_bad_core_setting_is_logged_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AFS_DEDUP_WINDOW", "soon")
    monkeypatch.setenv("AFS_MAX_ATTEMPTS", "4")
    handler = CapturingHandler()
    manager = NotificationManager({"capture": handler})
    assert manager.settings.dedup_window == 60.0  # the bad one keeps its default ...
    assert manager.settings.max_attempts == 4  # ... the good one next to it is used
    errors = [r for r in caplog.records if "AFS_DEDUP_WINDOW" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno >= logging.WARNING
    assert "AFS_DEDUP_WINDOW: must be a number, got 'soon' (using the default)" in errors[0].getMessage()
    assert manager.notify("still works") is not None
    handler.wait_for()
    manager.close()


def test_strict_mode_raises_on_a_bad_core_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFS_STRICT", "1")
    monkeypatch.setenv("AFS_MAX_ATTEMPTS", "lots")
    with pytest.raises(ConfigurationError, match="AFS_MAX_ATTEMPTS: must be a whole number"):
        NotificationManager()
    with pytest.raises(ConfigurationError, match="AFS_MAX_ATTEMPTS"):
        NotificationManager.from_env()


def test_a_missing_afs_env_file_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.env"
    monkeypatch.setenv("AFS_ENV_FILE", str(missing))
    manager = NotificationManager.from_env()
    assert "AFS_ENV_FILE: no such file" in caplog.text
    manager.close()
    monkeypatch.setenv("AFS_STRICT", "yes")
    with pytest.raises(ConfigurationError, match="AFS_ENV_FILE"):
        NotificationManager.from_env()


# storms ----------------------------------------------------------------------------------


def test_an_event_storm_becomes_one_message_and_one_digest(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path, dedup_window=2.0)
    results = [
        manager.notify(
            "NaN loss", f"NaN at step {step}", EventType.NAN_DETECTED, run_id="r1", step=step, key="loss"
        )
        for step in range(10_000)
    ]
    assert results[0] is not None and all(result is None for result in results[1:])
    [digest] = captured.wait_for(lambda e: e.digest_count > 0, timeout=15)
    assert manager.flush(10).pending == 0
    assert len(captured.events) == 2
    first = captured.events[0]
    assert first.context["step"] == 0 and first.digest_count == 0
    assert digest.digest_count == 9_999 and not digest.collapse
    assert "9,999" in digest.title and "NaN at step 9999" in digest.message
    assert digest.context["host"] == socket.gethostname()  # digests are enriched like events
    manager.close()


def test_manager_context_is_added_to_every_event_and_keys_dedup(tmp_path: Path) -> None:
    handler = CapturingHandler()
    manager = NotificationManager(
        {"capture": handler},
        settings=Settings(state_dir=tmp_path),
        context={"run_id": "from-manager", "project": "p"},
    )
    manager.notify("nan", event_type=EventType.NAN_DETECTED)
    assert manager.notify("nan", event_type=EventType.NAN_DETECTED) is None  # same run: collapsed
    assert manager.notify("nan", event_type=EventType.NAN_DETECTED, run_id="other") is not None
    assert manager.flush(10).pending == 0
    assert [(e.run_id, e.context["project"]) for e in handler.events] == [
        ("from-manager", "p"),
        ("other", "p"),
    ]
    manager.close()


# the seed system's convenience methods ----------------------------------------------------


def test_seed_convenience_methods(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path, dedup_window=0)
    manager.notify_training_started("resnet", "run-1", 10, 64)
    manager.notify_training_completed("resnet", "run-1", 3723.4, 0.1234, {"acc": 0.9})
    try:
        raise MemoryError("CUDA out of memory")
    except MemoryError as error:
        manager.notify_training_failed("resnet", "run-1", error)
    manager.notify_cost_alert(12.5, 10.0, "resnet")
    manager.notify_evaluation_completed("resnet", "run-1", {"f1": 0.8})
    saved = manager.notify("custom", "message", "checkpoint_saved", "success", checkpoint="/ckpt/1")
    assert manager.flush(10).pending == 0
    got = {e.event_type: e for e in captured.events}
    started = got[EventType.TRAINING_STARTED]
    assert started.message == "Run run-1 started (10 epochs, batch size 64)."
    assert (started.level, started.context["epochs"]) == (NotificationLevel.INFO, 10)
    completed = got[EventType.TRAINING_COMPLETED]
    assert completed.level is NotificationLevel.SUCCESS
    assert completed.metrics == {"acc": 0.9, "loss": 0.1234}
    # The duration and the metrics are the event's fields (every channel shows them):
    # the text does not say them twice.
    assert completed.message == "Finished."
    assert completed.context["duration"] == 3723.4 and completed.context["outcome"] == "completed"
    failed = got[EventType.TRAINING_FAILED]
    assert failed.level is NotificationLevel.ERROR
    assert failed.context["error"] == "MemoryError: CUDA out of memory" and "Traceback" in failed.message
    cost = got[EventType.COST_THRESHOLD]
    assert cost.title == "Cost alert for resnet: $12.50" and cost.key == "10"
    assert got[EventType.EVALUATION_COMPLETED].message == "f1=0.8"
    # A message sent by name is pushed whatever its type (the verbosity governs run events).
    custom = got[EventType.CHECKPOINT_SAVED]
    assert saved is not None and custom.id == saved.id
    assert custom.level is NotificationLevel.SUCCESS and custom.context["checkpoint"] == "/ckpt/1"
    assert all(e.context["host"] == socket.gethostname() for e in captured.events)
    manager.close()


# secrets ---------------------------------------------------------------------------------


def test_no_secret_in_history_database_logs_status_or_repr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = f"hooktoken{uuid.uuid4().hex}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook/{token}"  # nothing listens: requests raises with the URL
    channel = HookChannel(url, timeout=2.0)
    manager = manager_for(tmp_path, {"hook": channel}, **NEVER)
    with caplog.at_level(logging.DEBUG):
        manager.notify(f"posting to {url}", f"details: {url}")
        wait_until(lambda: first_attempt_done(manager), what="the first attempt")
        manager.flush(10)
        manager.close()
    [delivery] = manager.outbox.history()[0].deliveries
    assert (delivery.last_error or "").startswith("ConnectionError: ")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite3*"))
    assert b"posting to ***" in stored and b"ConnectionError" in stored  # it did look
    assert token.encode() not in stored
    shown = caplog.text + repr(channel) + repr(manager.status()) + repr(manager.outbox.history())
    assert token not in shown


def first_attempt_done(manager: NotificationManager) -> bool:
    history = manager.outbox.history()
    return bool(history) and history[0].deliveries[0].attempts >= 1


# Flush reports and context redaction -----------------------------------------------------


def test_flush_report_counts_a_message_delivered_just_before_the_flush(tmp_path: Path) -> None:
    manager, captured = capturing_manager(tmp_path)
    manager.notify("early", key="early")
    captured.wait_for()  # the sender delivered it before flush() was called
    report = manager.flush(5)
    assert (report.delivered, report.pending, report.dead) == (1, 0, 0)
    assert manager.flush(5).delivered == 0  # counted once, not again by the next report
    manager.close()


def test_a_registered_secret_in_a_context_value_never_reaches_the_history(tmp_path: Path) -> None:
    from afs_callbacks.redaction import register_secret

    secret = "tok-" + uuid.uuid4().hex
    register_secret(secret)
    manager, captured = capturing_manager(tmp_path)
    manager.notify("crash", error=f"POST https://x.example/{secret} failed", details={"url": [secret]})
    [got] = captured.wait_for()
    assert secret not in repr(got.context)
    manager.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite3*"))
    assert secret.encode() not in raw
