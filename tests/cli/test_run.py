"""``afs-notify run -- CMD``: a real wrapper process around a real child, reporting to a
real HTTP server on loopback. The exit status is always the child's."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afs_callbacks.testing import LoopbackReceiver, Reply
from cli.helpers import TIMEOUT, afs_notify, cli_env, history

# A child that says it is running (on stdout, which the wrapper does not touch), then
# works until a signal stops it.
# Its stderr line before "ready": the test signals on "ready", and a child killed between
# the two lines would leave no tail to check.
SLEEPER = (
    "import sys, time\n"
    "print('epoch 1 of 100', file=sys.stderr, flush=True)\n"
    "print('ready', flush=True)\n"
    "for _ in range(600): time.sleep(0.1)\n"
)


def events_by_type(receiver: LoopbackReceiver) -> dict[str, dict[str, object]]:
    """The events the receiver got, by type (the body is the event's to_dict())."""
    return {body["event_type"]: body for body in (request.json() for request in receiver.requests)}


def test_exit_code_is_the_childs_and_failure_carries_the_stderr_tail(receiver: LoopbackReceiver) -> None:
    child = (
        "import sys\n"
        "print('loading data', file=sys.stderr)\n"
        "raise SystemExit('ValueError: shapes (3,) and (4,) differ')"
    )

    result = afs_notify(
        "run",
        "--model",
        "resnet",
        "--",
        sys.executable,
        "-c",
        child,
        env=cli_env(WEBHOOK_URL=receiver.url("/hook")),
    )

    assert result.returncode == 1  # SystemExit with a message exits 1
    assert "loading data" in result.stderr  # streamed through to the user
    receiver.wait_for(2)
    events = events_by_type(receiver)
    assert set(events) == {"training_started", "training_failed"}
    failed = events["training_failed"]
    assert failed["context"]["exit_code"] == 1 and failed["context"]["model"] == "resnet"
    assert "loading data" in str(failed["message"]) and "shapes (3,) and (4,) differ" in str(
        failed["message"]
    )
    # The message leads with the error (the stderr's last line), then how the command ended.
    assert failed["context"]["error"] == "ValueError: shapes (3,) and (4,) differ"
    assert str(failed["message"]).splitlines()[:2] == [
        "ValueError: shapes (3,) and (4,) differ",
        str(failed["message"]).splitlines()[1],
    ] and str(failed["message"]).splitlines()[1].startswith("Exited with code 1 after")


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_kept_when_every_channel_is_down(receiver: LoopbackReceiver, code: int) -> None:
    receiver.default = Reply(503, "down for maintenance")
    env = cli_env(WEBHOOK_URL=receiver.url("/hook"), AFS_EXIT_FLUSH_TIMEOUT="1")

    result = afs_notify("run", "--", sys.executable, "-c", f"raise SystemExit({code})", env=env)

    assert result.returncode == code
    assert "pending" in result.stderr  # the one-line summary says the report is still queued


def test_success_reports_completed_with_duration(receiver: LoopbackReceiver, isolated_env: Path) -> None:
    result = afs_notify(
        "run",
        "--run-id",
        "r-1",
        "--",
        sys.executable,
        "-c",
        "pass",
        env=cli_env(WEBHOOK_URL=receiver.url("/hook")),
    )

    assert result.returncode == 0
    receiver.wait_for(2)
    completed = events_by_type(receiver)["training_completed"]
    assert completed["context"]["run_id"] == "r-1" and completed["context"]["exit_code"] == 0
    assert isinstance(completed["context"]["duration"], float)
    assert {entry.event.event_type.value for entry in history(isolated_env, run_id="r-1")} == {
        "training_started",
        "training_completed",
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_and_reported_as_interrupted(
    receiver: LoopbackReceiver, isolated_env: Path, sig: signal.Signals
) -> None:
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afs_callbacks",
            "run",
            "--run-id",
            "pre-1",
            "--",
            sys.executable,
            "-c",
            SLEEPER,
        ],
        env=cli_env(WEBHOOK_URL=receiver.url("/hook")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline().strip() == "ready"  # the child runs: now preempt it
        wrapper.send_signal(sig)
        _, stderr = wrapper.communicate(timeout=TIMEOUT)
    finally:
        wrapper.kill()

    assert wrapper.returncode == -sig  # died of the same signal as its child, like a shell shows it
    interrupted = [
        e for e in history(isolated_env, run_id="pre-1") if e.event.event_type.value == "training_interrupted"
    ]
    assert len(interrupted) == 1
    event = interrupted[0].event
    assert event.context["signal"] == sig.name and event.context["exit_code"] == 128 + sig
    assert "Last lines of stderr:\nepoch 1 of 100" in event.message  # the tail (the command quotes it too)
    assert [d.state for d in interrupted[0].deliveries] == ["delivered"]  # before the wrapper exited
    assert "epoch 1 of 100" in stderr


def test_a_command_that_cannot_start_exits_127_and_is_reported(receiver: LoopbackReceiver) -> None:
    result = afs_notify(
        "run", "--", "no-such-program-afs", "--flag", env=cli_env(WEBHOOK_URL=receiver.url("/hook"))
    )

    assert result.returncode == 127
    assert "cannot run 'no-such-program-afs'" in result.stderr
    [request] = receiver.wait_for(1)
    assert request.json()["event_type"] == "training_failed"


def test_a_secret_on_the_command_line_is_masked(receiver: LoopbackReceiver, isolated_env: Path) -> None:
    url = "https://hooks.slack.com/services/T1/B2/sekretTOKEN42"

    result = afs_notify(
        "run", "--", sys.executable, "-c", "pass", url, env=cli_env(WEBHOOK_URL=receiver.url("/hook"))
    )

    assert result.returncode == 0
    receiver.wait_for(2)
    assert all(b"sekretTOKEN42" not in request.body for request in receiver.requests)
    assert all("sekretTOKEN42" not in entry.event.to_json() for entry in history(isolated_env))


# Counts the SIGINTs it gets, then exits 130 as a shell does after Ctrl-C.
COUNTS_SIGINT = (
    "import signal, sys, time\n"
    "got = []\n"
    "signal.signal(signal.SIGINT, lambda *_: got.append(1))\n"
    "print('ready', flush=True)\n"
    "deadline = time.time() + 20\n"
    "while not got and time.time() < deadline: time.sleep(0.05)\n"
    "time.sleep(0.5)  # time for a second, forwarded SIGINT to arrive, if one were sent\n"
    "print('sigints', len(got), flush=True)\n"
    "sys.exit(130)\n"
)


def test_ctrl_c_at_a_terminal_reaches_the_child_once(isolated_env: Path) -> None:
    # A real terminal: the wrapper runs as a session leader on a pseudo-terminal, and ^C
    # written to it makes the kernel signal the foreground process group (wrapper and child).
    pid, terminal = pty.fork()
    if pid == 0:  # the forked child: become the wrapper, and never run the test's code
        argv = ["-m", "afs_callbacks", "run", "--run-id", "tty-1", "--", sys.executable, "-c", COUNTS_SIGINT]
        try:
            os.execve(sys.executable, [sys.executable, *argv], cli_env(AFS_CONSOLE="never"))
        finally:
            os._exit(127)
    shown = _read_until(terminal, b"ready")
    os.write(terminal, b"\x03")
    shown += _read_until(terminal, None)
    _, status = os.waitpid(pid, 0)
    os.close(terminal)

    assert b"sigints 1" in shown, shown  # not 2: the wrapper did not forward the terminal's SIGINT
    assert os.waitstatus_to_exitcode(status) == 130
    [event] = [
        e.event
        for e in history(isolated_env, run_id="tty-1")
        if e.event.event_type.value == "training_interrupted"
    ]
    assert event.context["signal"] == "SIGINT"


def _read_until(fd: int, marker: bytes | None, timeout: float = TIMEOUT) -> bytes:
    """Read the terminal until ``marker`` appears (or until it closes, for None)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker is None or marker not in data:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"timed out waiting for {marker!r}; got {data!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process on the terminal has exited
            chunk = b""
        if not chunk:
            if marker is None:
                return data
            raise AssertionError(f"the terminal closed before {marker!r}; got {data!r}")
        data += chunk
    return data
