"""Death notices: a run killed without a word (SIGKILL here, standing for the OOM killer, a
scheduler's hard limit or a reboot) is reported within seconds, once.

Real processes throughout: a child "training" process writes its run row through
Outbox.save_run, calls ensure_watcher (which starts the real watcher process) and is killed
with SIGKILL; the watcher reports through a real webhook channel to a loopback receiver.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from afs_callbacks._watcher_main import DELIVERY_BOUND
from afs_callbacks.delivery import deathwatch, rendezvous
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.manager import NotificationManager
from afs_callbacks.runstate import RunState
from afs_callbacks.testing import LoopbackReceiver, Reply
from tests.helpers.children import start_ready_child

CHILD = """
import os, socket, sys, time
from afs_callbacks.delivery.deathwatch import ensure_watcher, watcher_alive
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import RunState
state_dir, run_id, mode = sys.argv[1:4]
outbox = Outbox(os.path.join(state_dir, "outbox.sqlite3"))
now = time.time()
state = RunState(run_id, "tiny-net", host=socket.gethostname(), pid=os.getpid(), started_at=now,
                 updated_at=now, step=120, total_steps=2000, epoch=3, total_epochs=10)
outbox.save_run(state)
ensure_watcher(state_dir, os.getpid())
deadline = time.monotonic() + 30
while not watcher_alive() and time.monotonic() < deadline:  # the first one starts it, on a thread
    time.sleep(0.02)
if mode == "end":
    outbox.save_run(RunState(run_id, "tiny-net", host=state.host, pid=os.getpid(), status="completed",
                             started_at=now, updated_at=time.time(), ended_at=time.time()))
print("ready", flush=True)
if mode == "hold":
    sys.stdin.read()
"""


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def killed_notices(receiver: LoopbackReceiver) -> list[str]:
    bodies = [request.body.decode("utf-8", "replace") for request in receiver.requests]
    return [body for body in bodies if "killed without a word" in body]


def start_child(env: dict[str, str], run_id: str, mode: str = "hold") -> subprocess.Popen[str]:
    return start_ready_child(CHILD, env["AFS_STATE_DIR"], run_id, mode, env=env)


def run_status(state_dir: Path, run_id: str) -> str:
    state = Outbox(state_dir / "outbox.sqlite3").run(run_id)
    assert state is not None
    return state.status


def test_sigkilled_run_gets_one_notice_and_is_marked_killed(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    child = start_child(watch_env, "run-a")
    child.kill()  # SIGKILL; not reaped until the end, so the watcher can read the signal
    wait_until(lambda: len(killed_notices(receiver)) >= 1)
    body = json.loads(killed_notices(receiver)[0])
    text = json.dumps(body)
    assert "tiny-net" in text and "run-a" in text
    assert "SIGKILL" in text
    assert "step 120/2000" in text and "epoch 3/10" in text
    assert run_status(isolated_env, "run-a") == "killed"
    # The watcher leaves once nothing runs; by then no second notice was sent.
    wait_until(lambda: not deathwatch.watcher_alive())
    assert len(killed_notices(receiver)) == 1
    child.wait()


def test_run_that_ends_normally_gets_no_notice(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    child = start_child(watch_env, "run-ok", mode="end")
    assert child.wait(timeout=10) == 0
    wait_until(lambda: deathwatch.watcher_alive())  # it was started...
    wait_until(lambda: not deathwatch.watcher_alive())  # ...and left
    assert killed_notices(receiver) == []
    assert run_status(isolated_env, "run-ok") == "completed"


def test_two_runs_in_one_state_dir_each_get_a_notice(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    first, second = start_child(watch_env, "run-1"), start_child(watch_env, "run-2")
    first.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 1)
    assert run_status(isolated_env, "run-2") == "running"  # the live one is left alone
    second.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 2)
    wait_until(lambda: not deathwatch.watcher_alive())
    notices = killed_notices(receiver)
    assert len(notices) == 2
    assert {"run-1", "run-2"} == {json.loads(n)["context"]["run_id"] for n in notices}
    first.wait()
    second.wait()


def test_ddp_ranks_of_one_run_make_one_notice(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    ranks = [start_child(watch_env, "ddp-run"), start_child(watch_env, "ddp-run")]
    for rank in ranks:
        rank.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 1)
    wait_until(lambda: not deathwatch.watcher_alive())
    assert len(killed_notices(receiver)) == 1
    for rank in ranks:
        rank.wait()


#: A real run (RunNotifier, the environment's webhook) that is SIGKILLed by its own writer
#: thread the moment the transaction holding its start event commits: the earliest kill
#: after which its start can reach anyone.
KILLED_AT_ITS_START = """
import os, signal, sys, threading
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.integrations.loop import RunNotifier
write = Outbox.write
def write_then_die(self, items, runs=(), **options):
    stored = write(self, items, runs, **options)
    if any(event.event_type.value == "training_started" for event, _ in items):
        os.kill(os.getpid(), signal.SIGKILL)
    return stored
Outbox.write = write_then_die
with RunNotifier("tiny-net", run_id=sys.argv[1], monitors=True, chart=False):
    threading.Event().wait()
"""


def test_a_run_killed_as_soon_as_its_start_is_stored_gets_its_notice(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    """Its first state is stored with its start (or before it), never after: the watcher
    (already watching another run, as on a busy node) finds its row and reports it."""
    other = start_child(watch_env, "run-beside")
    wait_until(lambda: deathwatch.watcher_alive())
    child = subprocess.Popen([sys.executable, "-c", KILLED_AT_ITS_START, "early-run"], env=watch_env)
    assert child.wait(timeout=60) == -signal.SIGKILL
    wait_until(lambda: any("early-run" in notice for notice in killed_notices(receiver)))
    assert run_status(isolated_env, "early-run") == "killed"
    other.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 2)
    wait_until(lambda: not deathwatch.watcher_alive())
    assert sum("early-run" in notice for notice in killed_notices(receiver)) == 1
    other.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_report_vanished_reports_a_stale_row_once(
    isolated_env: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No watcher ran (the whole job was killed): the next process reports it."""
    earlier = time.time() - 3600
    Outbox(isolated_env / "outbox.sqlite3").save_run(
        RunState(
            "old-run",
            "big-net",
            host=socket.gethostname(),
            pid=dead_pid(),
            started_at=earlier,
            updated_at=earlier + 60,
            step=7,
        )
    )
    Outbox(isolated_env / "outbox.sqlite3").save_run(
        RunState("elsewhere", "big-net", host="another-node", pid=dead_pid(), started_at=earlier)
    )
    monkeypatch.setenv("WEBHOOK_URL", receiver.url("/hook"))
    with NotificationManager.from_env() as manager:
        deathwatch.report_vanished(manager.state_dir, manager.emit)
        # A second look (or a second process) adds nothing.
        deathwatch.report_vanished(manager.state_dir, manager.emit)
        manager.flush(10)
    notices = killed_notices(receiver)
    assert len(notices) == 1
    assert "old-run" in notices[0] and "the next run" in notices[0]
    assert run_status(isolated_env, "old-run") == "killed"
    assert run_status(isolated_env, "elsewhere") == "running"  # another host's: unknowable here


def test_a_reused_pid_does_not_keep_a_dead_run_alive() -> None:
    """This process's pid stands for a reused one: it started after the row's last update."""
    started = deathwatch.sight(os.getpid())
    assert started is not None and started.create_time is not None
    assert not deathwatch.process_gone(os.getpid(), time.time())
    assert deathwatch.process_gone(os.getpid(), started.create_time - 3600)
    assert deathwatch.process_gone(dead_pid(), time.time())


def test_disabled_starts_no_watcher(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFS_ENABLED", "false")
    deathwatch.ensure_watcher(str(isolated_env), os.getpid())
    assert not os.path.exists(rendezvous.folder())
    assert not deathwatch.watcher_alive()


def test_notice_also_goes_to_the_channels_the_run_set_up_in_code(
    watch_env: dict[str, str], isolated_env: Path, receiver: LoopbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher knows only the environment's channels (none here); the run's own
    channel, registered in code, gets the notice from the next process that has it."""
    from tests.helpers.hook import HookChannel, manager_for

    for name in ("AFS_DEATHWATCH_INTERVAL", "AFS_DEATHWATCH_GRACE"):
        monkeypatch.setenv(name, watch_env[name])
    with manager_for(isolated_env, {"hook": HookChannel(receiver.url("/own"))}) as manager:
        manager.notify("Training started: coded-net", run_id="coded-run")
        manager.flush(10)
        now = time.time()
        Outbox(isolated_env / "outbox.sqlite3").save_run(
            RunState(
                "coded-run",
                "coded-net",
                host=socket.gethostname(),
                pid=dead_pid(),
                started_at=now,
                updated_at=now,
            )
        )
        deathwatch.ensure_watcher(str(isolated_env), os.getpid())
        wait_until(lambda: run_status(isolated_env, "coded-run") == "killed")
        wait_until(lambda: manager.flush(1) is not None and len(killed_notices(receiver)) >= 1)
    assert len(killed_notices(receiver)) == 1
    assert "coded-net" in killed_notices(receiver)[0]


def test_reads_the_oom_kill_count_and_peak_memory_of_the_cgroup() -> None:
    """The real cgroup files of this machine (v2 ``memory.events``/``memory.peak`` or v1
    ``memory.oom_control``/``memory.max_usage_in_bytes``); skipped where none is readable."""
    oom, peak = deathwatch.cgroup_memory(deathwatch.cgroup_dir(os.getpid()))
    if oom is None and peak is None:
        pytest.skip("no readable memory cgroup here")
    assert oom is None or oom >= 0
    assert peak is None or peak > 0


TRAINING_CHILD = """
import os, sys, threading, time, torch
import lightning.pytorch as pl
from afs_callbacks.delivery.deathwatch import watcher_alive
from afs_callbacks.integrations.lightning import AFSNotify

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(32, 1)
    def training_step(self, batch, batch_idx):
        if batch_idx == 20:
            # Mid-training means after the watcher took its lock: a process killed in the
            # few hundred ms before (its spawn, its imports) is reported at the next start.
            deadline = time.monotonic() + 30
            while not watcher_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            print("training", flush=True)
            threading.Event().wait()  # holds here until SIGKILLed
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

x = torch.rand(32 * 50, 32)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)
notify = AFSNotify(model_name="killed-net", monitors=False, chart=False)
trainer = pl.Trainer(max_epochs=1, callbacks=[notify], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=sys.argv[1])
trainer.fit(Tiny(), data)
"""


@pytest.mark.slow
def test_a_real_lightning_run_killed_mid_training_is_reported(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path, tmp_path: Path
) -> None:
    """End to end, without a wrapper: AFSNotify's manager starts the watcher by itself."""
    pytest.importorskip("torch")  # the child process trains with these
    pytest.importorskip("lightning.pytorch")
    # A grace of 1 s can be shorter than the first row's write on a loaded machine (the
    # watcher would leave before the run it was started for appears); 60 s by default.
    env = dict(watch_env, AFS_DEATHWATCH_GRACE="5")
    child = start_ready_child(
        TRAINING_CHILD, str(tmp_path / "lightning"), env=env, ready="training", stderr=subprocess.DEVNULL
    )
    child.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 1, timeout=60)
    notice = json.loads(killed_notices(receiver)[0])
    assert notice["title"].endswith("Training killed without a word: killed-net"), notice["title"]
    wait_until(lambda: not deathwatch.watcher_alive())
    assert len(killed_notices(receiver)) == 1
    child.wait()


def test_what_a_killed_process_was_sending_does_not_hold_its_notice(isolated_env: Path) -> None:
    """Its run's "started" was in flight when it died (leased for a minute): the notice
    waits behind a message in flight, so the watcher gives that lease back at once."""
    pid = dead_pid()
    host = socket.gethostname()
    with Outbox(isolated_env / "outbox.sqlite3") as outbox:
        now = time.time()
        outbox.save_run(RunState("leased-run", "net", host=host, pid=pid, started_at=now, updated_at=now))
        started = NotificationEvent(
            EventType.TRAINING_STARTED,
            NotificationLevel.INFO,
            "Training started: net",
            "",
            {"run_id": "leased-run"},
        )
        outbox.enqueue(started, ["hook"])
        (claimed,) = outbox.claim("hook", lease_seconds=60.0, owner=f"{host}:{pid}")
        assert claimed.event.id == started.id
        notices = deathwatch.find_and_claim(outbox, host=host, detected_by="test")
        assert len(notices) == 1
        outbox.enqueue(notices[0], ["hook"])
        (end,) = outbox.claim("hook", lease_seconds=60.0)
    assert end.event.id == notices[0].id
    assert [event.id for event in end.told] == [started.id]  # told with it, in its order


def test_the_watcher_logs_what_it_reported_and_what_failed_and_no_secret(
    watch_env: dict[str, str], receiver: LoopbackReceiver
) -> None:
    """The watcher's stderr goes nowhere, so its log says what it did: the run that
    registered, the notice it reported, the service's refusal and the retry, its leaving.
    The webhook's token is in the URL and in the refusal (a service echoing the path it
    was sent): neither it nor a piece of it is written there."""
    token = "Zq8TkPw3sXv9Lm2Rb7Nc"
    env = {**watch_env, "WEBHOOK_URL": receiver.url(f"/hooks/{token}")}
    receiver.default = Reply(500, f'{{"error": "hook /hooks/{token} is failing"}}'.encode())
    log_path = Path(rendezvous.log_path())

    def logged() -> str:
        return log_path.read_text() if log_path.exists() else ""

    child = start_child(env, "run-logged")
    child.kill()
    # The flush line comes after the watcher's DELIVERY_BOUND of retries.
    wait_until(lambda: "will retry" in logged() and "still pending 1" in logged(), 3 * DELIVERY_BOUND)
    wait_until(lambda: not deathwatch.watcher_alive())
    child.wait()
    text = logged()
    assert f"(pid {child.pid}) registered" in text
    assert "reporting '💀 Training killed without a word: tiny-net' (run run-logged)" in text
    assert "HTTP 500" in text
    assert "leaving" in text
    pieces = {token[i : i + 6] for i in range(len(token) - 5)}
    assert not [piece for piece in pieces if piece in text], text
