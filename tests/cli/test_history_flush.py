"""``afs-notify history`` and ``afs-notify flush`` over a real outbox: events left by other
processes (one killed mid-run), read and delivered by a real CLI subprocess."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from afs_callbacks.channels.base import DeliveryResult
from afs_callbacks.config import Settings
from afs_callbacks.events import EventType, NotificationEvent
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import CapturingHandler, LoopbackReceiver, Reply
from cli.helpers import TIMEOUT, afs_notify, cli_env, history

# A training process that queues three events while its webhook is down, then is killed
# with SIGKILL: no exit flush, no cleanup, rows left pending in the outbox.
KILLED_RUN = """
import os, signal
from afs_callbacks import NotificationManager
manager = NotificationManager.from_env()
for step in (1, 2, 3):
    manager.notify(f"step {step}", event_type="custom", run_id="killed-run", step=step, key=str(step))
manager.flush(10)  # each tried once against the failing server, so all are pending with backoff
print("queued", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flush_delivers_the_backlog_of_a_killed_process(
    receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    server_up = threading.Event()
    receiver.responder = lambda request: Reply(200) if server_up.is_set() else Reply(503, "starting up")
    env = cli_env(WEBHOOK_URL=receiver.url("/hook"), AFS_RETRY_BASE="600")  # backoff far beyond the test
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert killed.returncode == -9 and "queued" in killed.stdout, killed.stderr
    assert {d.state for entry in history(isolated_env) for d in entry.deliveries} == {"pending"}
    server_up.set()

    result = afs_notify("flush", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    delivered = [r.json() for r in receiver.requests if r.json()["title"].startswith("step")]
    assert sorted(body["context"]["step"] for body in delivered[-3:]) == [1, 2, 3]
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("webhook"))
    assert row[:4] == ["webhook", "3", "0", "0"]
    assert {d.state for entry in history(isolated_env) for d in entry.deliveries} == {"delivered"}


def test_flush_retry_dead_requeues_failed_messages(receiver: LoopbackReceiver) -> None:
    env = cli_env(WEBHOOK_URL=receiver.url("/hook"))
    receiver.reply(Reply(400, "bad payload"))
    assert afs_notify("error", "--model", "m", "--run-id", "r", "--error", "x", env=env).returncode == 1

    untouched = afs_notify("flush", env=env)
    requeued = afs_notify("flush", "--retry-dead", env=env)

    assert untouched.returncode == 0 and "Nothing to deliver" in untouched.stdout
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert "1 failed message queued again" in requeued.stderr
    assert len(receiver.requests) == 2


def test_flush_names_channels_it_cannot_deliver_for(isolated_env: Path) -> None:
    # Left by a process that had a Discord channel; this shell has no Discord settings.
    always_down = CapturingHandler([DeliveryResult.retry("HTTP 503")] * 10)
    manager = NotificationManager({"discord": always_down}, settings=Settings(state_dir=isolated_env))
    manager.notify("left behind")
    manager.flush(10)
    manager.close(timeout=0)

    result = afs_notify("flush", "--json")

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["channels"]["discord"]["pending"] == 1
    assert "no settings for it here" in report["channels"]["discord"]["note"]


class RefusesNaN(CapturingHandler):
    """Refuses the NaN alert for good, whenever it comes: the sender sends the end of a run
    first, so which event is attempted first depends on how the writer batched them."""

    def send(self, event: NotificationEvent) -> DeliveryResult:
        result = super().send(event)
        if event.event_type is EventType.NAN_DETECTED:
            return DeliveryResult.permanent("HTTP 404: hook deleted")
        return result


def make_history(state_dir: Path) -> None:
    """Three runs' worth of events; one delivery failed for good."""
    handler = RefusesNaN()
    manager = NotificationManager(
        {"capture": handler}, settings=Settings(state_dir=state_dir, dedup_window=0)
    )
    manager.notify("NaN at step 7", event_type="nan_detected", run_id="a", step=7)  # fails: 404
    manager.notify("Run a done", event_type="training_completed", run_id="a")
    manager.notify("Run b started", event_type="training_started", run_id="b")
    manager.flush(10)
    manager.close(timeout=0)


def test_history_shows_events_with_their_delivery_state(isolated_env: Path) -> None:
    make_history(isolated_env)

    everything = afs_notify("history")
    dead = afs_notify("history", "--state", "failed")
    run_b = afs_notify("history", "--run", "b", "--json")
    errors = afs_notify("history", "--level", "error", "--type", "NAN_DETECTED")

    assert everything.returncode == 0
    lines = everything.stdout.splitlines()
    assert "Run b started" in lines[0]  # newest first
    assert sum("capture  delivered" in line for line in lines) == 2
    assert "HTTP 404: hook deleted" in dead.stdout and "Run a done" not in dead.stdout
    [event] = json.loads(run_b.stdout)
    assert event["title"] == "Run b started" and event["deliveries"][0]["state"] == "delivered"
    assert "NaN at step 7" in errors.stdout and "Run" not in errors.stdout


def test_flush_shows_progress_on_a_terminal(receiver: LoopbackReceiver, isolated_env: Path) -> None:
    receiver.default = Reply(503)
    env = cli_env(WEBHOOK_URL=receiver.url("/hook"), AFS_RETRY_BASE="600", TERM="xterm")
    afs_notify("notify", "--title", "queued", "--timeout", "5", env=env)
    receiver.default = Reply(200)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "afs_callbacks", "flush"],
            env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, timeout=TIMEOUT,
        )  # fmt: skip
        os.close(terminal)
        shown = _read_all(controller)
    finally:
        os.close(controller)

    assert process.returncode == 0
    assert "flushing: " in shown and "\x1b[" in shown  # a progress line and a coloured table
    assert "delivered".upper() in shown.upper()


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")
