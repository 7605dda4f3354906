"""``afs_callbacks.watch``: crashes, Ctrl-C and SIGTERM of any training code reported on
the run, through a real webhook channel to a loopback receiver; and the excepthook and
SIGTERM fallbacks the framework callbacks install, exercised in real subprocesses.

No ML framework is imported here: an out-of-memory error is an exception class named
like PyTorch's, which is how the tracker recognises it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import afs_callbacks
from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.testing import LoopbackReceiver
from afs_callbacks.tracking import RunTracker, TrackerConfig, active_tracker
from afs_callbacks.watch import (
    SIGTERM_EXIT_CODE,
    TerminatedBySignal,
    Watch,
    install_excepthook,
    install_sigterm_handler,
    uninstall_excepthook,
    watch,
)

REPO = Path(__file__).resolve().parents[1]
SECRET_TOKEN = "T0k3n-watch-s3cr3t-9f8e7d"


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``; classified by name and message."""


@pytest.fixture(autouse=True)
def default_sigterm() -> Iterator[None]:
    """Each test starts with SIGTERM's default handling and leaves the process as it was."""
    handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(autouse=True)
def no_run_left_active() -> Iterator[None]:
    """Each test starts with no run active in this process.

    watch() reports on the active run when there is one (as documented), through that run's
    manager. A run an earlier test started and never ended (one whose tracker was made to
    fail) would otherwise take the report away from the manager a test here passes, and
    the receiver would get nothing: the cause of this module's failures in full-suite runs.
    """
    gc.collect()  # a run nobody holds any more goes with its last reference
    while (stale := active_tracker()) is not None:
        # Still held (by its own stall watchdog thread, where that holds it strongly).
        from afs_callbacks.tracking import tracker

        stale.close()
        tracker._active.discard(stale)  # the one registry of running runs (no public verb)
    yield


@pytest.fixture
def manager(receiver: LoopbackReceiver, tmp_path: Path) -> Iterator[NotificationManager]:
    """A manager with one real webhook channel pointed at the loopback receiver."""
    channel = WebhookNotifier(receiver.url(f"/hooks/{SECRET_TOKEN}"))
    settings = Settings(state_dir=tmp_path / "state", console="never")
    with NotificationManager({"webhook": channel}, settings=settings) as built:
        yield built


def received(receiver: LoopbackReceiver) -> list[NotificationEvent]:
    """What the receiver got, in order. No waiting: watch() delivers before it re-raises."""
    return [NotificationEvent.from_dict(request.json()) for request in receiver.requests]


def kinds_of(events: list[NotificationEvent]) -> set[EventType]:
    """The event types received. A set: the end of a run may overtake its start (the most
    urgent message goes first)."""
    return {event.event_type for event in events}


def one(events: list[NotificationEvent], kind: EventType) -> NotificationEvent:
    """The one event of ``kind``."""
    [event] = [event for event in events if event.event_type is kind]
    return event


def started_tracker(manager: NotificationManager, **config: object) -> RunTracker:
    tracker = RunTracker(manager, TrackerConfig(stall_timeout=None, monitors=False, **config))  # type: ignore[arg-type]
    tracker.start(epochs=2)
    return tracker


# The context manager and decorator --------------------------------------------------------


def test_a_crash_is_reported_before_it_is_raised_again(manager, receiver):
    with pytest.raises(ValueError, match="bad batch"), watch(manager, model_name="resnet"):
        raise ValueError(f"bad batch; config was {receiver.url(f'/hooks/{SECRET_TOKEN}')}")

    [failed] = received(receiver)
    assert failed.event_type is EventType.TRAINING_FAILED
    assert failed.model == "resnet"
    assert "ValueError: bad batch" in failed.message and "test_watch.py" in failed.message
    assert SECRET_TOKEN not in failed.to_json()
    assert SECRET_TOKEN not in repr(manager.outbox.history(limit=10))


def test_the_run_a_callback_announced_is_the_one_reported(manager, receiver):
    tracker = started_tracker(manager, model_name="announced")
    assert active_tracker() is tracker

    with pytest.raises(RuntimeError), watch():  # no arguments: the active run
        raise RuntimeError("loss exploded")

    events = received(receiver)
    assert len(events) == 2 and kinds_of(events) == {EventType.TRAINING_STARTED, EventType.TRAINING_FAILED}
    failed = one(events, EventType.TRAINING_FAILED)
    assert failed.run_id == tracker.run_id and failed.model == "announced"
    assert tracker.finished and active_tracker() is None


def test_a_run_reporting_elsewhere_does_not_take_a_crash_watched_for_another_manager(
    manager, receiver, tmp_path
):
    settings = Settings(state_dir=tmp_path / "elsewhere", console="never")
    with NotificationManager({}, settings=settings) as elsewhere:
        stale = started_tracker(elsewhere, model_name="left-behind")
        assert active_tracker() is stale  # e.g. a run whose end hook never ran

        with pytest.raises(ValueError), watch(manager, model_name="mine"):
            raise ValueError("bad batch")

        [failed] = received(receiver)
        assert failed.event_type is EventType.TRAINING_FAILED and failed.model == "mine"
        assert not stale.finished
        stale.close()


def test_without_a_run_the_channels_come_from_the_environment(receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/from-env"))

    with pytest.raises(ZeroDivisionError), watch(model_name="plain-loop"):
        1 / 0  # noqa: B018 - the crash being watched

    [failed] = received(receiver)
    assert failed.event_type is EventType.TRAINING_FAILED and failed.model == "plain-loop"
    assert receiver.requests[0].path == "/from-env"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KeyboardInterrupt(), EventType.TRAINING_INTERRUPTED),
        (TerminatedBySignal(), EventType.TRAINING_INTERRUPTED),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)"), EventType.OUT_OF_MEMORY),
        (SystemExit(3), EventType.TRAINING_FAILED),
    ],
)
def test_each_kind_of_ending_is_classified(manager, receiver, error, kind):
    with pytest.raises(type(error)), watch(manager):
        raise error

    [event] = received(receiver)
    assert event.event_type is kind
    if kind is EventType.OUT_OF_MEMORY:
        assert event.context["device"] == "GPU 0"
    if isinstance(error, KeyboardInterrupt):
        assert "KeyboardInterrupt" in event.context["reason"]


@pytest.mark.parametrize("ending", [None, SystemExit(0), SystemExit(None), GeneratorExit()])
def test_a_clean_ending_is_not_news(manager, receiver, ending):
    if ending is None:
        with watch(manager):
            pass
    else:
        with pytest.raises(type(ending)), watch(manager):
            raise ending
    assert manager.flush(5).delivered == 0
    assert receiver.requests == []


def test_one_report_per_run_even_when_nested(manager, receiver):
    tracker = started_tracker(manager)
    with pytest.raises(ValueError), watch(tracker), watch():
        raise ValueError("reported by the inner block only")

    events = received(receiver)
    assert len(events) == 2 and kinds_of(events) == {EventType.TRAINING_STARTED, EventType.TRAINING_FAILED}


def test_decorator_forms_keep_the_function_and_its_result(manager, receiver):
    @watch
    def bare(x: int) -> int:
        """Doubles."""
        return 2 * x

    @watch(manager, model_name="decorated")
    def crashes() -> None:
        raise ValueError("inside a decorated function")

    assert bare(21) == 42 and bare.__name__ == "bare" and bare.__doc__ == "Doubles."
    with pytest.raises(ValueError):
        crashes()
    [failed] = received(receiver)
    assert failed.model == "decorated"
    with pytest.raises(ValueError):  # a second call of the same function is a new run
        crashes()
    assert len(received(receiver)) == 2


def test_afs_callbacks_watch_is_callable_whatever_was_imported_first():
    module = sys.modules["afs_callbacks.watch"]
    assert isinstance(module(), Watch)  # the module object stands in for the function
    code = textwrap.dedent(
        """
        from afs_callbacks.watch import install_excepthook  # the submodule first
        import afs_callbacks
        with afs_callbacks.watch(model_name="x"):
            pass
        print(type(afs_callbacks.watch()).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Watch"
    assert afs_callbacks.watch is not None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"patience=-1"):
        watch(patience=-1)
    with pytest.raises(TypeError):
        watch(model="unknown field")
    with pytest.raises(TypeError, match="expected a RunTracker"):
        watch("not a manager")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="no settings"):
        watch(print, model_name="x")  # type: ignore[call-overload]


def test_a_failing_report_never_replaces_the_real_error(manager, caplog):
    class Broken(RunTracker):
        def failed(self, error: BaseException) -> None:
            raise RuntimeError("tracker bug")

    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(ValueError, match="the real error"),
        watch(Broken(manager)),
    ):
        raise ValueError("the real error")
    assert "could not report the crash" in caplog.text


# SIGTERM ----------------------------------------------------------------------------------


def test_the_sigterm_handler_is_installed_only_over_the_default_and_put_back(manager):
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with watch(manager):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        with pytest.raises(TerminatedBySignal) as raised:
            signal.raise_signal(signal.SIGTERM)
        assert raised.value.code == SIGTERM_EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def own(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, own)
    try:
        with watch(manager):
            assert signal.getsignal(signal.SIGTERM) is own  # someone else's handler wins
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_no_sigterm_handler_from_another_thread():
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(install_sigterm_handler()))
    thread.start()
    thread.join()
    assert results == [None] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _sleep_in_child(ready: multiprocessing.synchronize.Event) -> None:
    import time

    ready.set()
    time.sleep(30)


def test_a_forked_child_that_inherits_the_handler_dies_of_sigterm_as_before():
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    restore = install_sigterm_handler()
    assert restore is not None
    try:
        child = context.Process(target=_sleep_in_child, args=(ready,))
        child.start()
    finally:
        restore()
    try:
        # A signal that lands while fork() is still settling in the child is dropped.
        assert ready.wait(20) and child.pid is not None
        os.kill(child.pid, signal.SIGTERM)
        child.join(20)
        assert child.exitcode == -signal.SIGTERM
    finally:
        child.kill()


def test_with_no_run_and_no_block_a_leftover_handler_lets_sigterm_kill_as_by_default():
    code = (
        "import time; from afs_callbacks.watch import install_sigterm_handler\n"
        "install_sigterm_handler()  # left behind by a run that crashed and was caught\n"
        "print('READY', flush=True); time.sleep(30)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "READY"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == -signal.SIGTERM
    finally:
        process.kill()


_TRAINING_SCRIPT = """
import sys, time
from afs_callbacks import NotificationManager
from afs_callbacks.tracking import RunTracker, TrackerConfig
from afs_callbacks.watch import install_excepthook, install_sigterm_handler, watch

mode = sys.argv[1]
tracker = RunTracker(config=TrackerConfig(model_name="job", stall_timeout=None, monitors=False))
tracker.start(epochs=1)   # channels from the environment, as a callback would
if mode == "crash":       # what a callback installs: no watch() around the training
    install_excepthook()
    raise ValueError("uncaught in the training script")
if mode == "sigterm-fallback":
    install_sigterm_handler()
    print("READY", flush=True)
    while True:
        time.sleep(0.01)
with watch():
    print("READY", flush=True)
    while True:
        time.sleep(0.01)
"""


def _run_job(receiver: LoopbackReceiver, tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEBHOOK_URL": receiver.url(f"/hooks/{SECRET_TOKEN}"),
        "AFS_STATE_DIR": str(tmp_path / "job-state"),
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _TRAINING_SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        if mode != "crash":
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "READY"
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("mode", ["sigterm-watch", "sigterm-fallback"])
def test_sigterm_is_reported_before_the_process_exits_with_143(receiver, tmp_path, mode):
    result = _run_job(receiver, tmp_path, mode)

    assert result.returncode == SIGTERM_EXIT_CODE, result.stderr[-2000:]
    events = received(receiver)  # no waiting: it is over
    kinds = kinds_of(events)
    assert kinds == {EventType.TRAINING_STARTED, EventType.TRAINING_INTERRUPTED}, result.stderr[-2000:]
    assert len(events) == 2 and "SIGTERM" in one(events, EventType.TRAINING_INTERRUPTED).context["reason"]
    assert "Traceback" not in result.stderr  # a quiet exit, as SIGTERM's default would be


def test_the_excepthook_fallback_reports_an_uncaught_crash_and_keeps_the_traceback(receiver, tmp_path):
    result = _run_job(receiver, tmp_path, "crash")

    assert result.returncode == 1
    assert "ValueError: uncaught in the training script" in result.stderr  # the previous hook ran
    events = received(receiver)
    assert len(events) == 2 and kinds_of(events) == {EventType.TRAINING_STARTED, EventType.TRAINING_FAILED}
    assert "uncaught in the training script" in one(events, EventType.TRAINING_FAILED).message
    assert SECRET_TOKEN not in result.stderr + result.stdout


# The excepthook, in process ----------------------------------------------------------------


def test_the_excepthook_chains_to_the_previous_one_and_reports_only_an_active_run(
    manager, receiver, monkeypatch
):
    calls: list[str] = []
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: calls.append(str(e)))
    install_excepthook()
    install_excepthook()  # idempotent: one wrapper
    try:
        sys.excepthook(ValueError, ValueError("no run yet"), None)
        assert calls == ["no run yet"] and manager.flush(5).delivered == 0

        tracker = started_tracker(manager)
        sys.excepthook(ValueError, ValueError("during the run"), None)
        assert calls == ["no run yet", "during the run"]
        events = received(receiver)
        assert (
            kinds_of(events) == {EventType.TRAINING_STARTED, EventType.TRAINING_FAILED} and tracker.finished
        )
    finally:
        uninstall_excepthook()
    assert sys.excepthook.__name__ == "<lambda>"


def test_a_crash_a_run_already_reported_is_not_reported_again_by_an_outer_block(manager, receiver):
    tracker = started_tracker(manager)
    error = ValueError("reported by the run itself")
    with pytest.raises(ValueError), watch(manager):
        tracker.failed(error)  # what an adapter does when the framework tells it first
        assert active_tracker() is None
        raise error

    events = received(receiver)
    assert len(events) == 2 and kinds_of(events) == {EventType.TRAINING_STARTED, EventType.TRAINING_FAILED}
