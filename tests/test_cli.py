"""afs-notify as a user runs it: a real subprocess, settings from its environment, events
through the real outbox to a real HTTP server on loopback (the generic webhook channel).

run/history/flush and the pure helpers have their own files under tests/cli/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli.helpers import afs_notify, cli_env, history

from afs_callbacks.cli import main
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply

# The seed system's command lines, exactly as its README wrote them (values filled in).
SEED_COMMANDS = [
    (
        ["complete", "--model", "X", "--run-id", "Y", "--duration", "3600", "--loss", "0.12"],
        "training_completed",
        {"duration": 3600.0, "metrics": {"loss": 0.12}},
    ),
    (["error", "--model", "X", "--run-id", "Y", "--error", "CUDA out of memory"], "training_failed", {}),
    (
        ["cost-alert", "--cost", "12.50", "--threshold", "10.00"],
        "cost_threshold",
        {"cost": 12.5, "threshold": 10.0},
    ),
    (
        ["evaluation", "--model", "X", "--run-id", "Y", "--metrics", "accuracy=0.95,f1=0.92"],
        "evaluation_completed",
        {"metrics": {"accuracy": 0.95, "f1": 0.92}},
    ),
    (
        ["start", "--model", "X", "--run-id", "Y", "--epochs", "3", "--batch-size", "8"],
        "training_started",
        {"epochs": 3, "batch_size": 8},
    ),
    (
        [
            "notify",
            "--title",
            "Checkpoint",
            "--message",
            "saved",
            "--type",
            "checkpoint_saved",
            "--level",
            "warning",
        ],
        "checkpoint_saved",
        {},
    ),
]


def webhook_env(receiver: LoopbackReceiver, **extra: str) -> dict[str, str]:
    """Settings with the generic webhook pointed at ``receiver``."""
    return cli_env(WEBHOOK_URL=receiver.url("/hook"), **extra)


@pytest.mark.parametrize(
    ("args", "event_type", "fields"), SEED_COMMANDS, ids=lambda v: v[0] if isinstance(v, list) else ""
)
def test_seed_subcommands_deliver_as_written(
    receiver: LoopbackReceiver, args: list[str], event_type: str, fields: dict[str, object]
) -> None:
    result = afs_notify(*args, env=webhook_env(receiver))

    assert result.returncode == 0, result.stderr
    body = receiver.wait_for(1)[0].json()
    assert body["event_type"] == event_type
    for key, value in fields.items():
        assert body["context"][key] == value
    assert "webhook" in result.stdout and "delivered" in result.stdout


def test_notify_takes_level_and_model(receiver: LoopbackReceiver) -> None:
    result = afs_notify(
        "custom", "--title", "Hi", "--message", "there", "--event-type", "loss_degraded", "--level", "ERROR",
        "--model", "bert", "--run-id", "r9", env=webhook_env(receiver),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    body = receiver.wait_for(1)[0].json()
    assert (body["event_type"], body["level"], body["context"]["model"]) == ("loss_degraded", "error", "bert")


def test_a_failed_delivery_exits_1_with_the_reason(receiver: LoopbackReceiver) -> None:
    # Every attempt fails: a flush now retries what fits its deadline, so one 500 is not enough.
    receiver.default = Reply(500, "database on fire")

    result = afs_notify(
        "error",
        "--model",
        "X",
        "--run-id",
        "Y",
        "--error",
        "boom",
        "--timeout",
        "5",
        env=webhook_env(receiver),
    )

    assert result.returncode == 1
    assert "pending" in result.stdout and "HTTP 500: database on fire" in result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["complete", "--model", "X"], "missing required option --run-id"),
        (["evaluation", "--model", "X", "--run-id", "Y"], "missing required option --metrics"),
        (["cost-alert", "--cost", "-1", "--threshold", "10"], "--cost must not be negative"),
        (["cost-alert", "--cost", "abc", "--threshold", "10"], "--cost must be a number"),
        (
            ["evaluation", "--model", "X", "--run-id", "Y", "--metrics", "accuracy"],
            "'accuracy' is not NAME=NUMBER",
        ),
        (
            ["evaluation", "--model", "X", "--run-id", "Y", "--metrics", "acc=high"],
            "must be a number, got 'high'",
        ),
        (["notify", "--title", "t", "--level", "loud"], "unknown level 'loud'"),
        (["notify", "--title", "t", "--type", "party"], "unknown event type 'party'"),
        (["history", "--state", "lost"], "unknown state 'lost'"),
        (["teleport"], "unknown command 'teleport'"),
        ([], "choose a command"),
        (["status", "--channel", "pigeon"], "unknown channel(s): pigeon"),
        (["status", "--env-file", "missing.env"], "no such file"),
        (["run"], "run needs a command"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("afs-notify: ")
    assert expected in lines[0]


def test_test_with_no_channel_goes_to_the_console_and_says_what_to_do() -> None:
    result = afs_notify("test")

    assert result.returncode == 0
    assert "console" in result.stdout and "delivered" in result.stdout
    assert "No channel is configured yet" in result.stdout
    assert "Test notification from afs-notify" in result.stderr  # the console line itself


def test_test_delivers_to_every_channel_whatever_its_routing(receiver: LoopbackReceiver) -> None:
    # WEBHOOK_MIN_LEVEL=error would keep an INFO test away from the channel it tests.
    result = afs_notify("test", env=webhook_env(receiver, WEBHOOK_MIN_LEVEL="error"))

    assert result.returncode == 0, result.stderr
    assert receiver.wait_for(1)[0].json()["event_type"] == "test"
    assert "webhook" in result.stdout and "delivered" in result.stdout


def test_test_reports_the_exact_reason_and_does_not_retry_later(
    receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    receiver.reply(Reply(404, "no such hook"))

    result = afs_notify("test", "--channel", "webhook", env=webhook_env(receiver))

    assert result.returncode == 1
    assert "failed" in result.stdout and "HTTP 404: no such hook" in result.stdout
    [entry] = history(isolated_env)
    assert [d.state for d in entry.deliveries] == ["dead"]  # not left pending for a later flush


def test_test_of_a_named_channel_that_is_not_set_up_is_a_config_error(receiver: LoopbackReceiver) -> None:
    result = afs_notify("test", "--channel", "slack", env=webhook_env(receiver))

    assert result.returncode == 2
    assert "slack" in result.stdout and "not set up" in result.stdout
    assert receiver.requests == []  # and nothing went to the webhook or the console


def test_status_lists_channels_masks_secrets_and_flags_bad_settings(receiver: LoopbackReceiver) -> None:
    env = webhook_env(receiver, DISCORD_WEBHOOK_URL="http://discord.example/api/webhooks/1/tok3nSECRET")

    result = afs_notify("status", env=env)

    assert result.returncode == 2  # the plain-http Discord URL is a configuration error
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "ready" in lines["webhook"] and f"http://127.0.0.1:{receiver.port}/***" in lines["webhook"]
    assert "config error" in lines["discord"] and "plain http" in lines["discord"]
    assert "not set up" in lines["telegram"]
    assert "tok3nSECRET" not in result.stdout + result.stderr
    assert receiver.requests == []  # status sends nothing


def test_status_json_and_check(receiver: LoopbackReceiver) -> None:
    def ntfy_health(request: ReceivedRequest) -> Reply | None:
        return Reply(200, {"healthy": True}) if request.path == "/v1/health" else None

    receiver.responder = ntfy_health
    env = webhook_env(receiver, NTFY_URL=receiver.url("/"), NTFY_TOPIC="runs")

    result = afs_notify("status", "--check", "--json", "--channel", "webhook,ntfy", env=env)

    assert result.returncode == 0, result.stderr
    channels = {row["channel"]: row for row in json.loads(result.stdout)["channels"]}
    assert set(channels) == {"webhook", "ntfy"}
    assert channels["ntfy"]["check"].startswith("reachable")
    assert channels["webhook"]["check"].startswith("no probe")
    assert [r.path for r in receiver.requests] == ["/v1/health"]  # nothing was posted


def test_status_check_exits_1_when_a_probe_fails(receiver: LoopbackReceiver) -> None:
    receiver.default = Reply(503, "maintenance")

    result = afs_notify(
        "status", "--check", "--channel", "ntfy", env=cli_env(NTFY_URL=receiver.url("/"), NTFY_TOPIC="t")
    )

    assert result.returncode == 1
    assert "unreachable" in result.stdout


def test_status_names_the_death_watcher_and_where_its_log_is(isolated_env: Path) -> None:
    """The watcher has no terminal: ``status`` says whether it runs, and where its log
    is, in words and in ``--json``."""
    from afs_callbacks.delivery import deathwatch
    from tests.helpers.hook import wait_until

    assert "Watcher:  not running (the next run starts it)\n" in afs_notify("status", env=cli_env()).stdout
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        isolated_env.mkdir(exist_ok=True)
        deathwatch.ensure_watcher(str(isolated_env), watched.pid)
        wait_until(
            lambda: deathwatch.watcher_pid() and deathwatch.watcher_log(), 30.0, "a watcher and its log"
        )
        pid, log = deathwatch.watcher_pid(), deathwatch.watcher_log()
        assert f"Watcher:  running (pid {pid}); log {log}\n" in afs_notify("status", env=cli_env()).stdout
        shown = json.loads(afs_notify("status", "--json", env=cli_env()).stdout)["watcher"]
        assert shown == {"pid": pid, "log": log}
    finally:
        watched.kill()
        watched.wait()


def test_shared_options_work_before_and_after_the_subcommand(
    receiver: LoopbackReceiver, tmp_path: Path
) -> None:
    env_file = tmp_path / "team.env"
    env_file.write_text(f"WEBHOOK_URL={receiver.url('/from-file')}\n")
    env = cli_env()

    before = afs_notify("--env-file", str(env_file), "--quiet", "test", env=env)
    after = afs_notify("test", "--env-file", str(env_file), "-q", "--channel", "webhook", env=env)

    assert (before.returncode, after.returncode) == (0, 0), before.stderr + after.stderr
    assert before.stdout == after.stdout == ""  # --quiet
    assert [r.path for r in receiver.wait_for(2)] == ["/from-file", "/from-file"]


def test_no_secret_reaches_output_or_the_history_database(
    receiver: LoopbackReceiver, isolated_env: Path
) -> None:
    token = "xoxbSECRETt0ken9876"
    secret_url = receiver.url(f"/services/T0SECRET/B0SECRET/{token}")
    # The server echoes the path back in its error body, as some services do.
    receiver.responder = lambda request: Reply(404, f"no hook at {request.path}")
    env = cli_env(
        SLACK_WEBHOOK_URL=secret_url, TELEGRAM_BOT_TOKEN="123456:AAsecretTELEGRAMtoken", TELEGRAM_CHAT_ID="42"
    )

    outputs = [
        afs_notify(*args, env=env)
        for args in (
            ["status"],
            ["status", "--json"],
            ["test", "--channel", "slack"],
            ["history"],
            ["history", "--json"],
            ["flush"],
        )
    ]

    assert receiver.requests, "the Slack channel never posted: the test would prove nothing"
    for result in outputs:
        text = result.stdout + result.stderr
        for secret in (token, "T0SECRET", "AAsecretTELEGRAMtoken"):
            assert secret not in text, f"{result.args[3:]} printed {secret}"
    database = b"".join(path.read_bytes() for path in isolated_env.glob("outbox.sqlite3*"))
    assert token.encode() not in database and b"T0SECRET" not in database


def test_piped_output_has_no_escape_codes(receiver: LoopbackReceiver) -> None:
    result = afs_notify("status", env=webhook_env(receiver))

    assert "\x1b[" not in result.stdout
    assert result.stdout.splitlines()[0].split() == ["CHANNEL", "STATE", "GETS", "DESTINATION", "/", "REASON"]


def test_the_console_script_is_installed() -> None:
    # `pip install -e .` declares afs-notify = afs_callbacks.cli:main
    from importlib.metadata import entry_points

    [script] = [e for e in entry_points(group="console_scripts") if e.name == "afs-notify"]
    assert script.value == "afs_callbacks.cli:main"
