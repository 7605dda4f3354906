"""The slips a newcomer makes, each answered with one line that names the cause and the fix:
the switch left off, a misspelt variable, a malformed URL, a damaged history. Real
``afs-notify`` subprocesses (and, for the library's side, a real tiny loop in a child
process), asserting the exact lines people read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afs_callbacks.testing import LoopbackReceiver
from cli.helpers import TIMEOUT, afs_notify, cli_env

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3tPartOfTheHook"
OFF_STATUS = "AFS_ENABLED=false: nothing is sent or stored (unset it to turn notifications on)"

#: A tiny real loop, as a user's script would run it (its channels from the environment).
LOOP = """
from afs_callbacks.integrations.loop import RunNotifier

with RunNotifier("tiny-loop", total_steps=5, monitors=False, chart=False, stall_timeout=None) as run:
    for step in range(5):
        run.step(loss=1.0 / (step + 1))
"""


def run_loop(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOOP], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# AFS_ENABLED=false ------------------------------------------------------------------------


def test_status_says_the_switch_is_off_on_its_first_line_and_each_channel_gets_nothing(
    isolated_env: Path, receiver: LoopbackReceiver
) -> None:
    env = cli_env(AFS_ENABLED="false", WEBHOOK_URL=receiver.url(f"/hook/{SECRET}"))
    result = afs_notify("status", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == OFF_STATUS
    webhook = next(line for line in lines if line.startswith("webhook"))
    assert re.split(r"\s{2,}", webhook)[:3] == ["webhook", "ready", "nothing (switched off)"]
    console = next(line for line in lines if line.startswith("console"))
    assert re.split(r"\s{2,}", console) == ["console", "off", "AFS_ENABLED=false"]
    assert "          none yet (nothing is stored while AFS_ENABLED is off)" in lines
    assert SECRET not in result.stdout + result.stderr


def test_test_with_the_switch_off_says_so_in_one_line_and_exits_2() -> None:
    for verbose in ((), ("-v",)):
        result = afs_notify("test", *verbose, env=cli_env(AFS_ENABLED="false"))
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr == "afs-notify: AFS_ENABLED=false: nothing is sent (unset it to test)\n"
    as_json = afs_notify("test", "--json", env=cli_env(AFS_ENABLED="false"))
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout) == {
        "results": [],
        "ok": False,
        "disabled": "AFS_ENABLED=false: nothing is sent (unset it to test)",
    }


def test_no_command_creates_a_file_while_the_switch_is_off(isolated_env: Path, tmp_path: Path) -> None:
    env = cli_env(AFS_ENABLED="false")
    commands = [
        ("status",),
        ("history",),
        ("test",),
        ("flush",),
        ("retry",),
        ("start", "--model", "m", "--run-id", "r"),
        ("notify", "--title", "hello"),
        ("run", "--", sys.executable, "-c", "pass"),
        ("monitor", "--duration", "0.1"),
    ]
    lines = {}
    for command in commands:
        result = afs_notify(*command, env=env)
        lines[command[0]] = result.stderr.splitlines()[:1]
        assert result.returncode == (2 if command[0] == "test" else 0), (command, result.stderr)
        assert "log line above" not in result.stdout + result.stderr
    assert lines["start"] == ["afs-notify: AFS_ENABLED=false: nothing is sent (unset it to send)"]
    assert lines["flush"] == ["afs-notify: AFS_ENABLED=false: nothing is sent (unset it to flush)"]
    assert lines["run"] == ["afs-notify: AFS_ENABLED=false: nothing is sent (the command runs unreported)"]
    # The dashboard too: a reader, it must not create the history it shows.
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "afs_callbacks", "dashboard", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    notes = []
    try:
        assert dashboard.stdout is not None and dashboard.stderr is not None
        assert dashboard.stdout.readline().startswith("afs-notify dashboard: http://127.0.0.1:")
        while not notes or notes[-1] != "afs-notify: press Ctrl-C to stop":  # its last note
            notes.append(dashboard.stderr.readline().rstrip("\n"))
    finally:
        dashboard.terminate()
        dashboard.communicate(timeout=TIMEOUT)
    assert (
        "afs-notify: AFS_ENABLED=false: nothing is sent or stored"
        " (runs started while it is set are not shown here)"
    ) in notes
    assert files_under(isolated_env) == []


def test_the_dashboard_says_the_switch_and_a_misspelt_variable_above_its_channels(
    isolated_env: Path, receiver: LoopbackReceiver
) -> None:
    from dashboard.support import request

    hook = receiver.url(f"/hook/{SECRET}")
    assert afs_notify("notify", "--title", "before", env=cli_env(WEBHOOK_URL=hook)).returncode == 0
    env = cli_env(AFS_ENABLED="false", WEBHOOK_URL=hook, SLAK_WEBHOOK_URL="https://hooks.slack.com/x")
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "afs_callbacks", "dashboard", "--port", "0", "--no-token"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert dashboard.stdout is not None
        url = dashboard.stdout.readline().split(": ", 1)[1].strip()
        answer = request(url, "/api/outbox")
    finally:
        dashboard.terminate()
        dashboard.communicate(timeout=TIMEOUT)
    assert answer.status == 200, answer.text
    channels = json.loads(answer.text)["channels"]
    assert channels[:2] == [
        {"channel": "settings", "state": "off", "detail": OFF_STATUS},
        {
            "channel": "settings",
            "state": "warning",
            "detail": "SLAK_WEBHOOK_URL is unknown: did you mean SLACK_WEBHOOK_URL?",
        },
    ]
    assert [row["channel"] for row in channels[2:]] == ["webhook"]
    assert SECRET not in answer.text


def test_a_training_with_the_switch_off_writes_no_file(isolated_env: Path, tmp_path: Path) -> None:
    result = run_loop(cli_env(AFS_ENABLED="false"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # said at INFO: a job started with the switch off on purpose
    assert files_under(isolated_env) == []


def test_a_switch_left_off_in_a_dotenv_file_is_named_with_the_file(
    isolated_env: Path, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("AFS_ENABLED=0\n")
    expected = f"AFS_ENABLED=0 (in {tmp_path / '.env'}): nothing is sent or stored"
    status = afs_notify("status", env=cli_env())
    assert status.stdout.splitlines()[0] == f"{expected} (unset it to turn notifications on)"
    training = run_loop(cli_env(), tmp_path)
    assert training.returncode == 0, training.stderr
    assert training.stderr.splitlines() == [f"afs-callbacks: {expected} (unset it to turn notifications on)"]
    assert files_under(isolated_env) == []


# Misspelt variables -------------------------------------------------------------------------


def test_a_misspelt_channel_variable_is_named_by_test_with_the_intended_name(tmp_path: Path) -> None:
    hook = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnop"
    from_env = afs_notify("test", env=cli_env(SLAK_WEBHOOK_URL=hook))
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.splitlines()[-1] == (
        "No channel is configured, so the test went to the console only: SLAK_WEBHOOK_URL is unknown:"
        " did you mean SLACK_WEBHOOK_URL? Fix the name in your environment and run `afs-notify test` again."
    )
    (tmp_path / ".env").write_text(f"SLAK_WEBHOOK_URL={hook}\n")
    from_file = afs_notify("test", env=cli_env())
    assert from_file.stdout.splitlines()[-1] == (
        "No channel is configured, so the test went to the console only: SLAK_WEBHOOK_URL is unknown:"
        f" did you mean SLACK_WEBHOOK_URL? Fix the name in {tmp_path / '.env'}"
        " and run `afs-notify test` again."
    )
    assert "abcdefghijklmnop" not in from_env.stdout + from_env.stderr + from_file.stdout + from_file.stderr


def test_test_names_a_misspelt_variable_beside_a_broken_channel(tmp_path: Path) -> None:
    """The advice is then about the broken channel; the misspelling still gets its line."""
    (tmp_path / ".env").write_text(f"SLACK_WEBHOOK_URL=hooks.slack.com/x/{SECRET}\nAFS_VERBOSE=1\n")
    result = afs_notify("test", env=cli_env())
    assert result.returncode == 2
    assert (
        "afs-notify: warning: AFS_VERBOSE is unknown: did you mean AFS_VERBOSITY?"
        in result.stderr.splitlines()
    )
    assert result.stdout.splitlines()[-1].startswith("The slack channel could not be set up")
    assert SECRET not in result.stdout + result.stderr


def test_a_dotenv_that_sets_no_destination_is_named_instead_of_copy_the_example(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AFS_VERBOSITY=quiet\n")
    result = afs_notify("test", env=cli_env())
    assert result.stdout.splitlines()[-1] == (
        f"No channel is configured in {tmp_path / '.env'}, so the test went to the console only. Set one"
        " destination there (e.g. SLACK_WEBHOOK_URL or NTFY_TOPIC) and run `afs-notify test` again;"
        f" {REPO / 'docs' / 'configuration.md'} lists every setting."
    )
    (tmp_path / ".env").unlink()
    without = afs_notify("test", env=cli_env())
    assert without.stdout.splitlines()[-1] == (
        f"No channel is configured yet, so the test went to the console only. Copy {REPO / '.env.example'}"
        " to .env, set one destination (e.g. SLACK_WEBHOOK_URL or NTFY_TOPIC)"
        " and run `afs-notify test` again;"
        f" {REPO / 'docs' / 'configuration.md'} lists every setting."
    )


def test_a_training_names_a_misspelt_variable_once(tmp_path: Path) -> None:
    env = cli_env(
        SLAK_WEBHOOK_URL="https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnop",
        AFS_VERBOSE="1",
    )
    result = run_loop(env, tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("afs-callbacks:")]
    assert warnings == [
        "afs-callbacks: AFS_VERBOSE is unknown: did you mean AFS_VERBOSITY?; SLAK_WEBHOOK_URL is unknown:"
        " did you mean SLACK_WEBHOOK_URL? (no channel is configured: messages go to the console)"
    ]
    assert "abcdefghijklmnop" not in result.stderr


# A mistyped command or option ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["statsu"], "afs-notify: unknown command 'statsu' (did you mean status?); see `afs-notify --help`"),
        (
            ["test", "--chanel", "slack"],
            "afs-notify: unknown option or argument: --chanel slack (did you mean --channel?);"
            " see `afs-notify --help`",
        ),
        (
            ["history", "--limt=3"],
            "afs-notify: unknown option or argument: --limt=3 (did you mean --limit?);"
            " see `afs-notify --help`",
        ),
        (["teleport"], "afs-notify: unknown command 'teleport'; see `afs-notify --help`"),
    ],
)
def test_a_mistyped_command_or_option_says_the_likely_one(argv: list[str], line: str) -> None:
    result = afs_notify(*argv, env=cli_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [line]


# Malformed URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (
            f"hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
            "SLACK_WEBHOOK_URL: has no https:// in front: got hooks.slack.com/services/T…/B…/…,"
            " expected https://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"https:/hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
            "SLACK_WEBHOOK_URL: needs two slashes after https: got https:/hooks.slack.com/services/T…/B…/…,"
            " expected https://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"'https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}'",
            "SLACK_WEBHOOK_URL: is wrapped in quotes: got 'https://hooks.slack.com/services/T…/B…/…',"
            " expected https://hooks.slack.com/services/T…/B…/… (remove them)",
        ),
        (
            f"<https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}>",
            "SLACK_WEBHOOK_URL: is wrapped in angle brackets: got <https://hooks.slack.com/services/T…/B…/…>,"
            " expected https://hooks.slack.com/services/T…/B…/… (remove them)",
        ),
        (
            f"ftp://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
            "SLACK_WEBHOOK_URL: must start with https:// (or http:// to a loopback host),"
            " got ftp://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET} x",
            "SLACK_WEBHOOK_URL: contains a space, which HTTP clients read in different ways:"
            " https://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"https//hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
            "SLACK_WEBHOOK_URL: needs a colon after https: got https//hooks.slack.com/services/T…/B…/…,"
            " expected https://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"htps://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
            "SLACK_WEBHOOK_URL: misspells https as 'htps': got htps://hooks.slack.com/services/T…/B…/…,"
            " expected https://hooks.slack.com/services/T…/B…/…",
        ),
    ],
    ids=["no-scheme", "one-slash", "quotes", "angle-brackets", "ftp", "space", "no-colon", "htps"],
)
def test_a_malformed_url_shows_its_non_secret_parts_and_what_was_expected(value: str, detail: str) -> None:
    result = afs_notify("status", "--channel", "slack", env=cli_env(SLACK_WEBHOOK_URL=value))
    assert result.returncode == 2
    row = next(line for line in result.stdout.splitlines() if line.startswith("slack"))
    assert re.split(r"\s{2,}", row, maxsplit=2) == ["slack", "config error", detail]
    assert SECRET not in result.stdout + result.stderr and "***" not in row


def test_a_training_names_a_malformed_url_by_its_shape(tmp_path: Path) -> None:
    """The library's log line says what the CLI says: redaction leaves the shape as it is
    (it holds no secret) and still masks the secret of the URL itself."""
    value = f"hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}"
    result = run_loop(cli_env(SLACK_WEBHOOK_URL=value), tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("afs-callbacks:")]
    assert warnings == [
        "afs-callbacks: slack channel not used: SLACK_WEBHOOK_URL: has no https:// in front:"
        " got hooks.slack.com/services/T…/B…/…, expected https://hooks.slack.com/services/T…/B…/…"
    ]
    assert SECRET not in result.stdout + result.stderr


# A damaged history --------------------------------------------------------------------------


def test_status_and_test_say_the_same_about_a_damaged_history_and_leave_it_in_place(
    isolated_env: Path, receiver: LoopbackReceiver
) -> None:
    isolated_env.mkdir(parents=True)
    damaged = isolated_env / "outbox.sqlite3"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    before = damaged.read_bytes()
    sentence = (
        f"cannot read the notification history {damaged}: the file is corrupted; move it aside"
        f" (mv {damaged} {damaged}.bad) or delete it; the next run starts a fresh one and pending"
        " messages in it are lost"
    )
    env = cli_env(WEBHOOK_URL=receiver.url(f"/hook/{SECRET}"))

    status = afs_notify("status", env=env)
    test = afs_notify("test", env=env)

    assert status.returncode == 2 and test.returncode == 2
    assert any(line.startswith("webhook  ") and "ready" in line for line in status.stdout.splitlines())
    assert f"          error: {sentence}" in status.stdout.splitlines()
    assert any(line.startswith("webhook") and "delivered" in line for line in test.stdout.splitlines())
    assert test.stdout.splitlines()[-1] == f"The test went through a temporary history: {sentence}."
    assert len(receiver.requests) == 1  # the test message itself went out
    assert damaged.read_bytes() == before
    assert sorted(p.name for p in isolated_env.iterdir()) == [damaged.name]
    assert "Traceback" not in status.stderr + test.stderr


@pytest.mark.parametrize("command", [("history",), ("history", "--json"), ("flush",), ("retry",)])
def test_the_other_readers_say_the_same_sentence_and_leave_the_file(
    isolated_env: Path, command: tuple[str, ...]
) -> None:
    isolated_env.mkdir(parents=True)
    damaged = isolated_env / "outbox.sqlite3"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    before = damaged.read_bytes()
    result = afs_notify(*command, env=cli_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"afs-notify: cannot read the notification history {damaged}: the file is corrupted; move it aside"
        f" (mv {damaged} {damaged}.bad) or delete it; the next run starts a fresh one and pending"
        " messages in it are lost\n"
    )
    assert damaged.read_bytes() == before
    assert sorted(p.name for p in isolated_env.iterdir()) == [damaged.name]


def test_the_dashboard_names_a_damaged_history_with_the_same_sentence(isolated_env: Path) -> None:
    from dashboard.support import request, running_dashboard

    isolated_env.mkdir(parents=True)
    damaged = isolated_env / "outbox.sqlite3"
    damaged.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    with running_dashboard(damaged) as server:
        page = request(f"http://127.0.0.1:{server.server_address[1]}", "/")
    assert page.status == 503
    assert (
        f"<p>Cannot read the notification history {damaged}: the file is corrupted; move it aside"
        f" (mv {damaged} {damaged}.bad) or delete it; the next run starts a fresh one and pending messages"
        " in it are lost.</p>"
    ) in page.text


# The death watcher in ps ------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process title is written on Linux")
def test_the_death_watcher_names_itself_in_ps(isolated_env: Path, tmp_path: Path) -> None:
    env = cli_env(AFS_DEATHWATCH_GRACE="3")
    result = run_loop(env, tmp_path)
    assert result.returncode == 0, result.stderr
    title = f"afs-callbacks death watcher for {isolated_env} (lingers 3 s after the last run)"

    def watchers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and title in (entry / "cmdline").read_bytes().decode(
                    errors="replace"
                ):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    deadline = time.monotonic() + 10
    while not watchers() and time.monotonic() < deadline:
        time.sleep(0.05)
    [pid] = watchers()
    assert Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode() == title
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "afs-deathwatch"
    shown = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    if shown.returncode == 0:  # procps is there (Debian's default)
        assert shown.stdout.strip() == title
    # It leaves after its grace period, as the docs say.
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not watchers()
