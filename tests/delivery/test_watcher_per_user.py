"""One death watcher per user and host (issue #23): every state dir that asked, each run's
notice through the channels of its own environment, secrets never on disk, and a run
killed before anything of it was stored still reported.

Real processes throughout (children that register, the real watcher process, SIGKILL) and
a real webhook channel to a loopback receiver. conftest gives each test its own
``XDG_RUNTIME_DIR``, so each test gets its own watcher.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.delivery import deathwatch, rendezvous
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.testing import LoopbackReceiver
from tests.helpers.children import start_ready_child

#: A training process that stored its first state and registered (like test_deathwatch's).
CHILD = """
import os, socket, sys, time
from afs_callbacks.delivery.deathwatch import ensure_watcher, watcher_alive
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.runstate import RunState
state_dir, run_id = sys.argv[1:3]
os.makedirs(state_dir, exist_ok=True)
now = time.time()
state = RunState(run_id, "tiny-net", host=socket.gethostname(), pid=os.getpid(),
                 started_at=now, updated_at=now)
Outbox(os.path.join(state_dir, "outbox.sqlite3")).save_run(state)
ensure_watcher(state_dir, os.getpid(), state)
deadline = time.monotonic() + 30
while not watcher_alive() and time.monotonic() < deadline:  # the first one starts it, on a thread
    time.sleep(0.02)
print("ready", flush=True)
sys.stdin.read()
"""

#: A real run whose store cannot take anything (the test holds its write lock): once
#: RunNotifier is entered, the run registered, and nothing of it is on disk.
UNSTORED_CHILD = """
import sys, threading
from afs_callbacks.integrations.loop import RunNotifier
with RunNotifier("early-net", run_id=sys.argv[1], monitors=False, chart=False):
    print("entered", flush=True)
    threading.Event().wait()
"""


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def killed_runs(receiver: LoopbackReceiver, path: str | None = None) -> list[str]:
    """The run ids of the death notices received (at ``path``), in order."""
    return [str(notice["context"]["run_id"]) for notice in killed_notices(receiver, path)]


def killed_notices(receiver: LoopbackReceiver, path: str | None = None) -> list[dict[str, Any]]:
    found = []
    for request in receiver.requests:
        body = request.body.decode("utf-8", "replace")
        if "killed without a word" in body and (path is None or request.path == path):
            found.append(json.loads(body))
    return found


def watcher_processes() -> list[int]:
    """The death watchers of this test's runtime dir (others' tests have their own)."""
    mine = f"XDG_RUNTIME_DIR={os.environ['XDG_RUNTIME_DIR']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "comm").read_text().strip() == "afs-deathwatch"
                and mine in (entry / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start_child(environ: dict[str, str], state_dir: Path, run_id: str) -> subprocess.Popen[str]:
    return start_ready_child(CHILD, str(state_dir), run_id, env=environ)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_one_watcher_for_every_state_dir_each_notice_by_its_own_channels(
    watch_env: dict[str, str], receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    """Three runs in three state dirs, two with a webhook of their own (a token in its
    path): one watcher process; each notice goes to its own run's webhook only."""
    secret = "tok-3f9c1e"
    envs = [
        dict(watch_env, WEBHOOK_URL=receiver.url(f"/a-{secret}")),
        dict(watch_env, WEBHOOK_URL=receiver.url("/b")),
        dict(watch_env, WEBHOOK_URL=receiver.url("/b")),
    ]
    dirs = [tmp_path / name for name in ("dir-a", "dir-b", "dir-c")]
    children = [start_child(e, d, f"run-{d.name}") for e, d in zip(envs, dirs, strict=True)]

    def title() -> str:
        return Path(f"/proc/{deathwatch.watcher_pid()}/cmdline").read_text()

    wait_until(lambda: " and 2 more state dirs " in title())
    assert len(watcher_processes()) == 1
    for child in children:
        child.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 3)
    wait_until(lambda: not deathwatch.watcher_alive())  # let go once every dir was idle for its grace
    assert killed_runs(receiver, f"/a-{secret}") == ["run-dir-a"]
    assert sorted(killed_runs(receiver, "/b")) == ["run-dir-b", "run-dir-c"]
    assert len(killed_notices(receiver)) == 3
    # The registrations (with the token) lived in memory only: not in any file here.
    for root in [*dirs, Path(rendezvous.folder())]:
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    for child in children:
        child.wait()


def test_a_run_killed_before_anything_of_it_was_stored_gets_its_notice(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    """The test holds the store's write lock, so the run's start and first state cannot be
    stored; the run is SIGKILLed once it has entered RunNotifier (it registered on the
    training thread). The watcher (already up for another run, as on a busy node) reports
    it from its registration, once, saying nothing of it was stored."""
    beside = start_child(watch_env, isolated_env, "run-beside")
    path = isolated_env / "outbox.sqlite3"
    lock = sqlite3.connect(path, isolation_level=None, timeout=0)
    lock.execute("BEGIN IMMEDIATE")  # the store's write lock, held
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", UNSTORED_CHILD, "early-run"],
            env=watch_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "entered"
        child.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL
        with Outbox(path) as outbox:  # reads go on under the write lock
            assert outbox.run("early-run") is None
            assert outbox.history(run_id="early-run") == []
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: "early-run" in killed_runs(receiver))
    (notice,) = [n for n in killed_notices(receiver) if n["context"]["run_id"] == "early-run"]
    assert "Nothing of the run was stored" in str(notice["message"])
    assert str(notice["title"]).endswith("Training killed without a word: early-net")
    with Outbox(path) as outbox:
        state = outbox.run("early-run")
        assert state is not None and state.status == "killed"
    beside.kill()
    wait_until(lambda: not deathwatch.watcher_alive())
    assert killed_runs(receiver).count("early-run") == 1
    beside.wait()


def test_a_run_that_ended_with_a_word_and_stored_nothing_is_not_killed(
    watch_env: dict[str, str], receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    """Its store was locked for its whole life (kept in memory); it ended and exited: the
    watcher, told of the end, reports nothing."""
    beside = start_child(watch_env, isolated_env, "run-beside")
    lock = sqlite3.connect(isolated_env / "outbox.sqlite3", isolation_level=None, timeout=0)
    lock.execute("BEGIN IMMEDIATE")
    try:
        code = "import os\nfrom afs_callbacks.integrations.loop import RunNotifier\n"
        code += "with RunNotifier('quiet-net', run_id='quiet-run', monitors=False, chart=False): pass\n"
        code += "os._exit(0)  # what a launcher does right after training: no close, no write-back\n"
        done = subprocess.run([sys.executable, "-c", code], env=watch_env, timeout=120)
        assert done.returncode == 0
    finally:
        lock.rollback()
        lock.close()
    beside.kill()
    wait_until(lambda: len(killed_notices(receiver)) >= 1)  # the one beside: the watcher looked
    wait_until(lambda: not deathwatch.watcher_alive())
    assert killed_runs(receiver) == ["run-beside"]
    beside.wait()


def start_watcher(state_dir: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    """A watcher process started as ensure_watcher starts one, its registration on stdin."""
    message = deathwatch.registration(str(state_dir), os.getpid())
    process = subprocess.Popen(
        [sys.executable, "-m", "afs_callbacks._watcher_main", str(state_dir), str(os.getpid()), "room " * 20],
        stdin=subprocess.PIPE,
        env=environ,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(message).encode())
    process.stdin.close()
    return process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_watcher_started_beside_another_hands_its_registration_over(
    watch_env: dict[str, str], tmp_path: Path
) -> None:
    """Two started at once (two runs that found none): one stays and watches both dirs."""
    first, second = start_watcher(tmp_path / "one", watch_env), start_watcher(tmp_path / "two", watch_env)
    wait_until(lambda: first.poll() is not None or second.poll() is not None)
    (left,) = [p for p in (first, second) if p.poll() is not None]
    (stays,) = [p for p in (first, second) if p.poll() is None]
    assert left.returncode == 0
    assert deathwatch.watcher_pid() == stays.pid
    wait_until(lambda: " and 1 more state dir " in Path(f"/proc/{stays.pid}/cmdline").read_text())
    # This test process is alive and registered for both: the watcher stays while it lives.
    assert stays.poll() is None
    stays.kill()
    stays.wait()


def test_no_registration_goes_to_a_folder_that_is_not_private(
    watch_env: dict[str, str], tmp_path: Path
) -> None:
    """Another user may have made the folder first in a shared /tmp: nothing is sent there,
    and no watcher listens there."""
    folder = Path(rendezvous.folder())
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert rendezvous.private_folder(create=True) is None
    assert not rendezvous.send({"op": "watch"})
    process = start_watcher(tmp_path / "state", watch_env)
    assert process.wait(timeout=60) == 1
    assert not any(folder.iterdir())
    os.chmod(folder, 0o700)
    assert rendezvous.private_folder(create=False) == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_process_that_asked_before_its_run_keeps_no_watcher_once_the_run_ended(tmp_path: Path) -> None:
    """Lightning's setup() asks for the watcher before the run exists (RunHooks.prepare);
    the run's own registration supersedes that ask, so once the run ended with a word the
    watcher may leave while the process (a notebook's kernel) lives on."""
    from afs_callbacks._watcher_main import Watcher

    watcher = Watcher(str(tmp_path / "state"), socket.gethostname())
    pid = os.getpid()
    watcher.register({"pid": pid, "env": {}})
    assert watcher.check()  # a live process that asked keeps it
    watcher.register({"pid": pid, "run_id": "run-1", "model": "m", "started_at": time.time(), "env": {}})
    assert watcher.check()
    watcher.ended({"pid": pid, "run_id": "run-1"})
    assert not watcher.check()


def _sleeper() -> subprocess.Popen[bytes]:
    """A process to register: alive until the test kills it."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def _watcher_of(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> int | None:
    """The pid of the watcher of the runtime dir ``runtime``, or None."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return rendezvous.lock_holder()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_registration_goes_to_the_watcher_of_the_environment_it_was_made_in(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that changes ``XDG_RUNTIME_DIR`` between runs (a test session does between
    tests): each registration reaches the watcher of the folder it was made for, at once,
    even while this process's watcher for another folder is still starting, and none
    lands in the folder of a later environment (where that watcher, watching a process
    of the earlier one, would keep it busy for as long as the process lives)."""
    runtimes = {name: tmp_path / f"run-{name}" for name in "abc"}
    for name, runtime in runtimes.items():
        runtime.mkdir(mode=0o700)
        (tmp_path / f"state-{name}").mkdir()
    monkeypatch.setattr(deathwatch, "SPAWN_GRACE_SECONDS", 120.0)
    child = _sleeper()
    try:
        for name in "ab":
            monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtimes[name]))
            deathwatch.ensure_watcher(str(tmp_path / f"state-{name}"), child.pid)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtimes["c"]))
        # Both, well within the time a started watcher has to listen before another is
        # started (lengthened here, so that a loaded machine's slow start cannot pass for a
        # registration that waited behind another folder's watcher). Both: the two start
        # side by side, and either may be the first to listen.
        wait_until(lambda: all(_watcher_of(runtimes[name], monkeypatch) is not None for name in "ab"), 30.0)
        watchers = {name: _watcher_of(runtimes[name], monkeypatch) for name in "ab"}
        for name, pid in watchers.items():
            assert f"state-{name}" in Path(f"/proc/{pid}/cmdline").read_text()
        assert watchers["a"] != watchers["b"]
        assert _watcher_of(runtimes["c"], monkeypatch) is None
    finally:
        child.kill()
        child.wait()
    for name in "ab":  # the process they watched is gone: both leave after their grace
        wait_until(lambda name=name: _watcher_of(runtimes[name], monkeypatch) is None)


def test_a_run_that_ends_before_its_watcher_listens_lets_it_leave(isolated_env: Path, tmp_path: Path) -> None:
    """A short run registers (which starts the watcher) and ends before the watcher
    listens: its "ended" waits behind the registration instead of reaching nobody, so
    the watcher leaves after its grace while the process (a notebook's kernel) lives on."""
    from afs_callbacks.runstate import RunState

    child = _sleeper()
    try:
        run = RunState(
            "short-run", "tiny-net", host=socket.gethostname(), pid=child.pid, started_at=time.time()
        )
        state_dir = str(isolated_env)
        isolated_env.mkdir()  # kept: the watcher leaves after its grace, not at once
        deathwatch.ensure_watcher(state_dir, child.pid, run)
        deathwatch.run_ended(state_dir, child.pid, run.run_id)
        wait_until(deathwatch.watcher_alive)
        wait_until(lambda: not deathwatch.watcher_alive())
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_only_a_run_of_this_process_registers_with_the_watcher(isolated_env: Path) -> None:
    """A sweep's live card is a run state with no process behind it (the watcher stores
    it: ``sweep_end.card_state``, no pid): storing it registers nothing, else the watcher
    showing it would watch itself for as long as it lives, and never leave. A run of
    this process registers. The test listens in the watcher's place; each registration is
    on the socket by the time ``update_run`` returns."""
    from afs_callbacks.manager import NotificationManager
    from afs_callbacks.runstate import RUNNING, RunState

    folder = rendezvous.private_folder(create=True)
    assert folder is not None
    lock = rendezvous.acquire(folder)
    listener = rendezvous.listen(folder)
    try:
        with NotificationManager.from_env() as manager:
            now = time.time()
            manager.update_run(RunState("slurm-1", "Sweep slurm-1", status=RUNNING, started_at=now))
            assert rendezvous.receive(listener, 0.0) == []
            manager.update_run(RunState("run-1", "tiny-net", pid=os.getpid(), status=RUNNING, started_at=now))
            assert [message["run_id"] for message in rendezvous.receive(listener, 0.0)] == ["run-1"]
    finally:
        listener.close()
        if lock is not None:
            os.close(lock)


def test_a_state_dir_whose_every_round_fails_is_let_go_after_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that raises keeps the watcher (a failed delivery is tried again next
    round), but not for ever: a state dir whose rounds all raised for ``FAILING_LIMIT``
    seconds is let go. A round that works starts the count again. The log has each
    streak's first traceback, not one a round."""
    from afs_callbacks import _watcher_main as main

    caplog.set_level(logging.INFO, logger="afs_callbacks.watcher")

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    process = main.WatcherProcess(str(tmp_path), -1, None, 1.0)  # type: ignore[arg-type]
    watcher = process.watched[str(state_dir)] = main.Watcher(str(state_dir), socket.gethostname())
    fails: list[bool] = []  # what each next check does: raise, or find a run still running

    def check() -> bool:
        if fails.pop(0):
            raise RuntimeError("an odd row")
        return True

    monkeypatch.setattr(watcher, "check", check)
    fails += [True, False, True, True]
    process.round()
    assert process.watched and watcher.failing_since is not None
    process.round()
    assert process.watched and watcher.failing_since is None
    process.round()
    assert watcher.failing_since is not None
    watcher.failing_since -= main.FAILING_LIMIT + 1  # minutes of failed rounds, without the wait
    process.round()
    assert not process.watched and not fails
    said = [(record.getMessage().split(": ", 1)[1], bool(record.exc_info)) for record in caplog.records]
    assert said == [
        ("a round failed; trying each round", True),
        ("a round works again", False),
        ("a round failed; trying each round", True),
        (f"let go (every round failed for {main.FAILING_LIMIT + 1:.0f} s)", False),
    ]
