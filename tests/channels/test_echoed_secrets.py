"""A service that echoes the request back in its error answer (as many do) must not carry a
secret into any output: the URL's path token, its ``sig=``, a Bearer value, an ntfy token
and a URL password ``user:password@``, each echoed plain, with JSON-escaped slashes,
percent-encoded, as HTML entities and bare, some straddling the 300th character where
answers are cut. Checked in DEBUG logs, ``afs-notify -v test``, ``status --check``,
``history``, ``history --json`` and the database file itself."""

from __future__ import annotations

import base64
import contextlib
import html
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from afs_callbacks.config import Env
from afs_callbacks.events import EventType, NotificationLevel
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.cli.helpers import afs_notify, cli_env

PATH_TOKEN = "pAthT0ken" + uuid.uuid4().hex
SIG = "S1g" + uuid.uuid4().hex
BEARER = "B3arer" + uuid.uuid4().hex
NTFY_TOKEN = "tk_" + uuid.uuid4().hex[:29]
PASSWORD = "p@ss/" + uuid.uuid4().hex[:12]
SECRETS = (PATH_TOKEN, SIG, BEARER, NTFY_TOKEN, PASSWORD)


_answered = itertools.count()


def echo(request: ReceivedRequest) -> Reply:
    """Answer 400 (401 for probes) with the request echoed in every encoding; each answer
    leads with another encoding, starting near the 300th character where answers are cut."""
    query = "&".join(f"{key}={quote(value)}" for key, values in request.query.items() for value in values)
    seen = f"{request.path}?{query} {request.headers.get('Authorization', '')}"
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        seen += " user " + base64.b64decode(auth[6:]).decode()
    copies = [
        seen,
        json.dumps({"request": seen}).replace("/", "\\/"),
        quote(seen, safe=""),
        html.escape(seen),
        seen.replace("&", "&amp;").replace("/", "&#x2F;"),
    ]
    first = next(_answered) % len(copies)
    body = "e" * 260 + " " + " | ".join(copies[first:] + copies[:first])
    return Reply(401 if request.method == "GET" else 400, body)


@pytest.fixture
def service() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(responder=echo) as receiver:
        yield receiver


def settings_for(service: LoopbackReceiver, state: Path) -> dict[str, str]:
    host = f"127.0.0.1:{service.port}"
    return {
        "WEBHOOK_URL": f"http://{host}/hooks/{PATH_TOKEN}?api-version=1&sig={SIG}",
        "WEBHOOK_HEADERS": json.dumps({"Authorization": f"Bearer {BEARER}"}),
        "NTFY_URL": f"http://{host}",
        "NTFY_TOPIC": "runs-7Hq2xPz9Kw",
        "NTFY_TOKEN": NTFY_TOKEN,
        "ALERTMANAGER_URL": f"http://am:{quote(PASSWORD, safe='')}@{host}",
        "AFS_STATE_DIR": str(state),
        "AFS_MAX_ATTEMPTS": "1",
        "AFS_CONSOLE": "never",
    }


def assert_clean(text: str, where: str) -> None:
    """No secret, and no 10 characters in a row of one (a half-cut secret), in any form."""
    for secret in SECRETS:
        for form in {secret, quote(secret, safe=""), html.escape(secret)}:
            windows = {form[i : i + 10] for i in range(len(form) - 9)}
            leaked = sorted(window for window in windows if window in text)
            assert not leaked, f"{where} shows part of a secret: {leaked[:3]}"


def state_bytes(state: Path) -> str:
    return "".join(path.read_bytes().decode("latin-1") for path in state.glob("outbox.sqlite3*"))


def wait_for_errors(manager: NotificationManager, channels: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manager.flush(1)
        errors = [
            d.last_error for entry in manager.outbox.history() for d in entry.deliveries if d.last_error
        ]
        if len(errors) >= channels:
            return
        time.sleep(0.05)
    raise AssertionError("the echoed errors were not recorded in time")


def test_echoed_secrets_are_masked_in_logs_history_and_the_database(
    service: LoopbackReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "echo-state"
    env = Env(settings_for(service, state), env_file=False)
    manager = NotificationManager.from_env(env, strict=True)
    assert set(manager.handlers) >= {"webhook", "ntfy", "alertmanager"}
    try:
        manager.notify("run failed", "boom", EventType.TRAINING_FAILED, level=NotificationLevel.ERROR)
        service.wait_for(3)
        wait_for_errors(manager, 3)
        details = [d.last_error or "" for entry in manager.outbox.history() for d in entry.deliveries]
    finally:
        manager.close(timeout=1)

    assert any("eeee" in detail for detail in details)  # the echo reached the detail...
    for detail in details:
        assert_clean(detail, "a delivery's error")  # ...with every secret masked
    assert_clean(caplog.text, "the DEBUG log")
    assert_clean(state_bytes(state), "the database file")

    env_cli = cli_env(**settings_for(service, state))
    for args in (("history",), ("history", "--json")):
        result = afs_notify(*args, env=env_cli)
        assert result.returncode == 0, result.stderr
        assert "eeee" in result.stdout or args == ("history",)
        assert_clean(result.stdout + result.stderr, f"afs-notify {' '.join(args)}")


def test_echoed_secrets_are_masked_by_test_and_status_check(
    service: LoopbackReceiver, tmp_path: Path
) -> None:
    env = cli_env(**settings_for(service, tmp_path / "cli-state"))

    tested = afs_notify("-v", "test", "--timeout", "10", env=env)
    checked = afs_notify("status", "--check", env=env)

    assert "webhook" in tested.stdout and "HTTP 400" in tested.stdout
    assert "unreachable" in checked.stdout and "HTTP 401" in checked.stdout
    assert_clean(tested.stdout + tested.stderr, "afs-notify -v test")
    assert_clean(checked.stdout + checked.stderr, "afs-notify status --check")
    assert_clean(state_bytes(tmp_path / "cli-state"), "the database file after the CLI")


# Every service, every part of its secrets ----------------------------------------------------
#
# Each service gets a loopback stand-in that refuses everything (401, as a service does for a
# bad credential) with an answer that echoes every part of the channel's secrets on its own:
# a Telegram description that quotes the token's secret half, a webhook answer that quotes
# the path token, an SMTP 535 that quotes the password. Each part is echoed bare first (where
# a stored error keeps it), then plain, JSON-escaped, percent-encoded and as HTML entities
# (cuts at the 300th character are the first test's concern).


def _token(prefix: str, length: int = 32) -> str:
    return (prefix + uuid.uuid4().hex + uuid.uuid4().hex)[:length]


@dataclass(frozen=True)
class Secrets:
    """One service's configuration (``variables`` of the stand-in's ``host``) and its secrets.

    ``echoed``: what the stand-in quotes back (whole secrets and each part on its own);
    ``hidden``: the parts none of which may be seen anywhere, in any encoding; ``answer``:
    the refusal, in the service's own shape, around the echo."""

    service: str
    variables: Callable[[str], dict[str, str]]
    echoed: tuple[str, ...]
    hidden: tuple[str, ...]
    answer: Callable[[str], Reply] = lambda echo: Reply(
        401, {"ok": False, "error_code": 401, "description": echo, "message": echo, "error": echo}
    )


TELEGRAM_TOKEN = "123456789:" + _token("AAH", 35)
SLACK_HOOK_SECRET = _token("sLaCk", 24)
SLACK_BOT_SECRET = _token("bOt", 24)
SLACK_BOT_TOKEN = f"xoxb-123456789012-1234567890123-{SLACK_BOT_SECRET}"
DISCORD_TOKEN = _token("dIsC0rd-", 68)
TEAMS_SIG = _token("t3amsSig", 43)
HOOK_PATH_TOKEN = _token("h00kPath", 40)
WHSEC_BODY = base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()
HOOK_BEARER = _token("b3arer", 40)
NTFY_SECRET = "tk_" + _token("n", 29)
ROUTING_KEY = _token("R0ute", 32)
TWILIO_SID = "AC" + uuid.uuid4().hex
TWILIO_TOKEN = uuid.uuid4().hex
TWILIO_BASIC = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
AM_PASSWORD = "am-" + _token("pW", 20)
APPRISE_PASSWORD = "Appr-" + _token("pa55", 20)
APPRISE_BASIC = base64.b64encode(f"bot:{APPRISE_PASSWORD}".encode()).decode()  # json:// sends Basic auth
SMTP_USER = "runs@example.org"
SMTP_PASSWORD = "Smtp-" + _token("pa55", 20)
SMTP_LOGIN = base64.b64encode(SMTP_PASSWORD.encode()).decode()  # AUTH LOGIN's password line
SMTP_PLAIN = base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode()  # AUTH PLAIN


SERVICES = (
    Secrets(
        "telegram",
        lambda host: {
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TELEGRAM_CHAT_ID": "-1001234567890",
            "TELEGRAM_API_URL": f"http://{host}",
        },
        (TELEGRAM_TOKEN, TELEGRAM_TOKEN.partition(":")[2]),
        (TELEGRAM_TOKEN.partition(":")[2],),
    ),
    Secrets(
        "slack",
        lambda host: {"SLACK_WEBHOOK_URL": f"http://{host}/services/T0SLACK01/B0SLACK02/{SLACK_HOOK_SECRET}"},
        (f"/services/T0SLACK01/B0SLACK02/{SLACK_HOOK_SECRET}", SLACK_HOOK_SECRET),
        (SLACK_HOOK_SECRET,),
    ),
    Secrets(
        "slack-bot",
        lambda host: {
            "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
            "SLACK_CHANNEL": "C0TRAINING",
            "SLACK_API_URL": f"http://{host}/api",
        },
        (SLACK_BOT_TOKEN, SLACK_BOT_SECRET),
        (SLACK_BOT_SECRET,),
        lambda echo: Reply(200, {"ok": False, "error": echo}),  # the Web API's refusal
    ),
    Secrets(
        "discord",
        lambda host: {
            "DISCORD_WEBHOOK_URL": f"http://{host}/api/webhooks/112233445566778899/{DISCORD_TOKEN}"
        },
        (f"112233445566778899/{DISCORD_TOKEN}", DISCORD_TOKEN),
        (DISCORD_TOKEN,),
    ),
    Secrets(
        "teams",
        lambda host: {
            "TEAMS_WEBHOOK_URL": f"http://{host}/workflows/abc/triggers/manual/paths/invoke"
            f"?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}"
        },
        (f"sig={TEAMS_SIG}", TEAMS_SIG),
        (TEAMS_SIG,),
    ),
    Secrets(
        "webhook",
        lambda host: {
            "WEBHOOK_URL": f"http://{host}/hooks/{HOOK_PATH_TOKEN}",
            "WEBHOOK_SECRET": f"whsec_{WHSEC_BODY}",
            "WEBHOOK_HEADERS": json.dumps({"Authorization": f"Bearer {HOOK_BEARER}"}),
        },
        (HOOK_PATH_TOKEN, f"whsec_{WHSEC_BODY}", WHSEC_BODY, f"Bearer {HOOK_BEARER}", HOOK_BEARER),
        (HOOK_PATH_TOKEN, WHSEC_BODY, HOOK_BEARER),
    ),
    Secrets(
        "ntfy",
        lambda host: {
            "NTFY_URL": f"http://{host}",
            "NTFY_TOPIC": "runs-7Hq2xPz9Kw",
            "NTFY_TOKEN": NTFY_SECRET,
        },
        (f"Bearer {NTFY_SECRET}", NTFY_SECRET),
        (NTFY_SECRET,),
    ),
    Secrets(
        "pagerduty",
        lambda host: {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY, "PAGERDUTY_API_URL": f"http://{host}/v2/enqueue"},
        (ROUTING_KEY,),
        (ROUTING_KEY,),
    ),
    Secrets(
        "sms",
        lambda host: {
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "SMS_TO_NUMBERS": "+15005550009",
            "TWILIO_API_URL": f"http://{host}",
        },
        (TWILIO_TOKEN, f"Basic {TWILIO_BASIC}", TWILIO_BASIC, f"{TWILIO_SID}:{TWILIO_TOKEN}"),
        (TWILIO_TOKEN, TWILIO_BASIC),
        lambda echo: Reply(400, {"code": 21999, "message": echo, "status": 400}),  # Twilio's error shape
    ),
    Secrets(
        "alertmanager",
        lambda host: {"ALERTMANAGER_URL": f"http://am:{quote(AM_PASSWORD, safe='')}@{host}"},
        (AM_PASSWORD, base64.b64encode(f"am:{AM_PASSWORD}".encode()).decode()),
        (AM_PASSWORD, base64.b64encode(f"am:{AM_PASSWORD}".encode()).decode()),
    ),
    Secrets(
        "apprise",
        lambda host: {"APPRISE_URLS": f"json://bot:{APPRISE_PASSWORD}@{host}/hook"},
        (APPRISE_PASSWORD, f"Basic {APPRISE_BASIC}", APPRISE_BASIC),
        (APPRISE_PASSWORD, APPRISE_BASIC),
    ),
    Secrets(
        "email",
        lambda host: {
            "SMTP_HOST": host.partition(":")[0],
            "SMTP_PORT": host.partition(":")[2],
            "SMTP_SECURITY": "none",
            "SMTP_USER": SMTP_USER,
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "FROM_EMAIL": SMTP_USER,
            "TO_EMAILS": "alice@example.org",
            "EMAIL_MIN_LEVEL": "info",
        },
        (SMTP_PASSWORD, SMTP_LOGIN, SMTP_PLAIN),
        (SMTP_PASSWORD, SMTP_LOGIN, SMTP_PLAIN),
    ),
)


def echoes(secrets: Secrets) -> str:
    """An answer that quotes the hidden parts on their own first (inside the 300 characters
    a stored error keeps), then every part and whole secret in every encoding."""
    copies = list(secrets.hidden)
    for part in (*secrets.hidden, *secrets.echoed):
        copies += [
            part,
            json.dumps(part)[1:-1].replace("/", "\\/"),
            quote(part, safe=""),
            html.escape(part),
            part.replace("&", "&amp;").replace("/", "&#x2F;").replace(":", "&#58;"),
        ]
    return "eeeeeeee refused: " + " | ".join(copies)


class EchoingSmtp:
    """An aiosmtpd authenticator that refuses every login with a 535 quoting the secrets."""

    def __init__(self, secrets: Secrets) -> None:
        self.text = echoes(secrets).replace("\r", " ").replace("\n", " ")

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        return AuthResult(success=False, handled=False, message=f"535 5.7.8 {self.text}")


@contextlib.contextmanager
def stand_in(secrets: Secrets) -> Iterator[str]:
    """The service's loopback stand-in; yields its ``host:port``."""
    if secrets.service == "email":
        pytest.importorskip("aiosmtpd", reason="the email stand-in needs aiosmtpd (pip install aiosmtpd)")
        from tests.channels.email_smtp_server import LoopbackController, RecordingHandler

        options = {"authenticator": EchoingSmtp(secrets), "auth_required": True, "auth_require_tls": False}
        controller = LoopbackController(RecordingHandler(), hostname="127.0.0.1", port=0, **options)
        controller.start()
        try:
            yield f"127.0.0.1:{controller.port}"
        finally:
            controller.stop()
        return
    answer = secrets.answer(echoes(secrets))
    with LoopbackReceiver(responder=lambda request: answer) as receiver:
        yield f"127.0.0.1:{receiver.port}"


def assert_hidden(text: str, secrets: Secrets, where: str) -> None:
    """No hidden part, and no 10 characters in a row of one, in any form."""
    for secret in secrets.hidden:
        for form in {secret, quote(secret, safe=""), html.escape(secret), json.dumps(secret)[1:-1]}:
            windows = {form[i : i + 10] for i in range(len(form) - 9)}
            leaked = sorted(window for window in windows if window in text)
            assert not leaked, f"{secrets.service}: {where} shows part of a secret: {leaked[:3]}"


@pytest.mark.parametrize("secrets", SERVICES, ids=[s.service for s in SERVICES])
def test_each_service_echoing_each_part_of_its_secrets_shows_none_of_them(
    secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "echo-state"
    with stand_in(secrets) as host:
        variables = {
            **secrets.variables(host),
            "AFS_STATE_DIR": str(state),
            "AFS_CONSOLE": "never",
            "AFS_DEDUP_WINDOW": "0",
        }
        manager = NotificationManager.from_env(Env(variables, env_file=False), strict=True)
        assert len(manager.handlers) == 1, manager.config_errors
        try:
            manager.notify("run failed", "boom", EventType.TRAINING_FAILED, level=NotificationLevel.ERROR)
            wait_for_errors(manager, 1)
            details = [d.last_error or "" for entry in manager.outbox.history() for d in entry.deliveries]
        finally:
            manager.close(timeout=1)
        log = "\n".join(
            r.getMessage() for r in caplog.records if r.name.startswith(("afs_callbacks", "apprise"))
        )
        shown = {"the library's DEBUG log": log}
        shown |= {f"a delivery's error ({index})": detail for index, detail in enumerate(details)}
        env = cli_env(**variables)
        runs = [
            ("-v", "test", "--timeout", "10"),
            ("status", "--check"),
            ("history",),
            ("history", "--json"),
            ("history", "--state", "dead"),
        ]
        for args in runs:
            result = afs_notify(*args, env=env)
            shown[f"afs-notify {' '.join(args)}"] = result.stdout + result.stderr
    shown["the database file"] = state_bytes(state)
    # The echo reached what people read (else this test would prove nothing) ...
    assert any("eeee" in text for text in shown.values()), shown
    # ... and none of it shows a secret.
    for where, text in shown.items():
        assert_hidden(text, secrets, where)
    assert_hidden(state_bytes(state), secrets, "the database file")  # ... and so does the file


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HTTP_SERVICES = [s for s in SERVICES if s.service != "email"]


@pytest.mark.parametrize("secrets", HTTP_SERVICES, ids=[s.service for s in HTTP_SERVICES])
def test_a_connection_error_naming_the_url_shows_no_secret(
    secrets: Secrets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody answers: the HTTP library's exception names the whole URL (a Telegram token
    sits in its path, a Slack or Discord token in the webhook's), and that text is what the
    log and the history keep."""
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "refused-state"
    variables = {
        **secrets.variables(f"127.0.0.1:{_closed_port()}"),
        "AFS_STATE_DIR": str(state),
        "AFS_CONSOLE": "never",
    }
    manager = NotificationManager.from_env(Env(variables, env_file=False), strict=True)
    assert len(manager.handlers) == 1, manager.config_errors
    try:
        manager.notify("run failed", "boom", EventType.TRAINING_FAILED, level=NotificationLevel.ERROR)
        wait_for_errors(manager, 1)
        details = [d.last_error or "" for entry in manager.outbox.history() for d in entry.deliveries]
    finally:
        manager.close(timeout=1)
    names = ("afs_callbacks", "apprise", "urllib3", "requests")
    log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(names))
    # The refusal was recorded (else this test would prove nothing) ...
    assert any(detail for detail in details), details
    history = afs_notify("history", "--json", env=cli_env(**variables))
    # ... and shows no secret, nor does anything else.
    for where, text in {"the DEBUG log": log, "the delivery's error": "\n".join(details)}.items():
        assert_hidden(text, secrets, where)
    assert_hidden(history.stdout + history.stderr, secrets, "afs-notify history --json")
    assert_hidden(state_bytes(state), secrets, "the database file")
