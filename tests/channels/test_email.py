"""Email channel against a real SMTP server (aiosmtpd) on loopback: STARTTLS and implicit TLS
with a throwaway CA (trustme), AUTH, refused recipients, 4xx/5xx answers, bad certificates."""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
import socket
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.email import EmailNotifier
from afs_callbacks.config import Env, Settings
from afs_callbacks.events import Attachment
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from tests.channels.email_smtp_server import (
    PASSWORD,
    USER,
    LoopbackController,
    RecordingHandler,
    start_server,
)

TO = ["alice@example.org", "bob@example.org"]
# The 8-byte PNG signature and a header: enough for a mail client to call it a PNG.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def starttls_server(handler: RecordingHandler, ca: trustme.CA) -> Iterator[LoopbackController]:
    server = start_server(handler, security="starttls", ca=ca)
    yield server
    server.stop()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotificationManager]:
    settings = Settings(
        state_dir=tmp_path / "state", dedup_window=0, retry_base=0.01, retry_cap=0.05, console="never"
    )
    manager = NotificationManager(settings=settings)
    yield manager
    manager.close(timeout=1)


def channel(server: LoopbackController, ca_file: str | None, **options: object) -> EmailNotifier:
    settings: dict[str, object] = {
        "port": server.port,
        "username": USER,
        "password": PASSWORD,
        "ca_file": ca_file,
        "timeout": 5.0,
    }
    settings.update(options)
    return EmailNotifier("127.0.0.1", TO, USER, **settings)  # type: ignore[arg-type]


def event(title: str = "Training failed", **changes: object) -> NotificationEvent:
    base = NotificationEvent(
        EventType.TRAINING_FAILED,
        NotificationLevel.ERROR,
        title,
        "CUDA error: device-side assert",
        {"model": "bert-tiny", "run_id": "r1", "step": 120, "metrics": {"loss": 0.25}},
    )
    return base.with_changes(**changes)


def parse(content: bytes) -> EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(content)
    assert isinstance(message, EmailMessage)
    return message


def states(manager: NotificationManager) -> list[tuple[str, str | None]]:
    """(state, last error) of every delivery, oldest event first, after a flush."""
    manager.flush(10)
    return [(d.state, d.last_error) for e in reversed(manager.outbox.history()) for d in e.deliveries]


def test_starttls_auth_text_html_and_inline_chart(
    manager: NotificationManager,
    starttls_server: LoopbackController,
    handler: RecordingHandler,
    ca_file: str,
) -> None:
    manager.register_handler("email", channel(starttls_server, ca_file))
    sent = manager.notify(
        'Loss <script>alert("x")</script> & NaN in モデル 🚀',
        "step 120: loss=nan\n<b>not bold</b>",
        EventType.NAN_DETECTED,
        NotificationLevel.ERROR,
        attachments=[Attachment("loss.png", "image/png", PNG)],
        model="bert<tiny>",
        run_id="r1",
        metrics={"loss": float("nan"), "lr": 3e-4},
    )
    assert sent is not None
    assert states(manager) == [("delivered", None)]

    [received] = handler.messages
    assert received.tls and received.login == USER
    assert received.mail_from == USER and received.rcpt_tos == TO
    message = parse(received.content)
    assert message["Subject"] == '[ERROR] Loss <script>alert("x")</script> & NaN in モデル 🚀'
    assert received.content.isascii()  # 7-bit clean: RFC 2047 headers, quoted-printable parts
    assert message["To"] == ", ".join(TO)
    assert sent.id in message["Message-ID"]
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text_part, related = message.get_payload()  # type: ignore[misc]
    assert text_part.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    text = text_part.get_content()
    assert 'Loss <script>alert("x")</script> & NaN in モデル 🚀' in text and "loss=NaN" in text

    html_part, image = related.get_payload()
    page = html_part.get_content()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; NaN" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page and "bert&lt;tiny&gt;" in page
    assert "<script>" not in page and "<b>" not in page
    assert image.get_content_type() == "image/png"
    assert image.get_content() == PNG
    [cid] = re.findall(r'src="cid:([^"]+)"', page)
    assert image["Content-ID"] == f"<{cid}>"
    assert image.get_content_disposition() == "inline"  # shown in place, not listed as a file


# aiosmtpd cannot tell that an implicit-TLS connection is encrypted, so its AUTH-over-TLS
# check is off there, and it warns about that.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls(manager: NotificationManager, ca: trustme.CA, ca_file: str) -> None:
    handler = RecordingHandler()
    server = start_server(handler, security="ssl", ca=ca)
    try:
        manager.register_handler("email", channel(server, ca_file, security="ssl"))
        manager.notify("Training completed", "done", EventType.TRAINING_COMPLETED)
        assert states(manager) == [("delivered", None)]
    finally:
        server.stop()
    [received] = handler.messages
    assert received.tls and received.login == USER
    assert parse(received.content)["Subject"] == "[SUCCESS] Training completed"


def test_wrong_password_disables_after_one_login(
    manager: NotificationManager,
    starttls_server: LoopbackController,
    handler: RecordingHandler,
    ca_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-Passw0rd-4711"
    notifier = channel(starttls_server, ca_file, password=wrong)
    manager.register_handler("email", notifier)
    for number in range(3):
        manager.notify(f"epoch {number}", event_type=EventType.EPOCH_COMPLETED)

    results = states(manager)
    assert [state for state, _ in results] == ["dead", "dead", "dead"]
    first = results[0][1] or ""
    assert "refused the login" in first and "535" in first and "SMTP_PASSWORD" in first
    assert all("channel disabled" in (error or "") for _, error in results[1:])
    # One AUTH command in all: one mechanism tried, and no attempt after the refusal.
    assert handler.auth_attempts == [("PLAIN", USER)]
    assert handler.messages == []

    shown = caplog.text + repr(notifier) + notifier.describe() + str(manager.status()) + str(results)
    assert wrong not in shown and wrong not in repr(manager.outbox.history())


def test_certificate_that_does_not_verify_is_refused(
    manager: NotificationManager, handler: RecordingHandler, tmp_path: Path
) -> None:
    impostor_ca, trusted_ca = trustme.CA(), trustme.CA()
    trusted = tmp_path / "trusted.pem"
    trusted_ca.cert_pem.write_to_path(str(trusted))
    server = start_server(handler, security="starttls", ca=impostor_ca)
    try:
        manager.register_handler("email", channel(server, str(trusted)))
        manager.notify("Training failed", event_type=EventType.TRAINING_FAILED)
        [(state, error)] = states(manager)
        # Without SMTP_CA_FILE the system's CAs do not know the impostor either.
        without_ca_file = channel(server, None).send(event())
    finally:
        server.stop()
    assert state == "dead"
    assert "certificate" in (error or "") and "SMTP_CA_FILE" in (error or "")
    assert without_ca_file.outcome is Outcome.PERMANENT and "system's CAs" in without_ca_file.detail
    # Nothing reached the impostor: no mail, and the password was never sent to it.
    assert handler.messages == [] and handler.auth_attempts == []


def test_refused_recipients_are_reported(
    starttls_server: LoopbackController, handler: RecordingHandler, ca_file: str
) -> None:
    handler.refused["bob@example.org"] = "550 5.1.1 <bob@example.org>: no such user"
    partly = channel(starttls_server, ca_file).send(event())
    assert partly.outcome is Outcome.DELIVERED
    assert "1 of 2" in partly.detail and "bob@example.org (550" in partly.detail
    assert [m.rcpt_tos for m in handler.messages] == [["alice@example.org"]]

    handler.refused["alice@example.org"] = "550 5.1.1 <alice@example.org>: no such user"
    nobody = channel(starttls_server, ca_file).send(event())
    assert nobody.outcome is Outcome.PERMANENT and not nobody.disable_channel
    assert "all 2 recipient(s) refused" in nobody.detail

    handler.refused["alice@example.org"] = "450 4.2.1 mailbox busy, try later"
    busy = channel(starttls_server, ca_file).send(event())
    assert busy.outcome is Outcome.RETRY
    assert len(handler.messages) == 1


def test_4xx_is_retried_and_5xx_is_permanent(
    manager: NotificationManager,
    starttls_server: LoopbackController,
    handler: RecordingHandler,
    ca_file: str,
) -> None:
    handler.data_replies.extend(["451 4.3.0 try again later", "554 5.6.0 message content rejected"])
    later = channel(starttls_server, ca_file).send(event())
    assert later.outcome is Outcome.RETRY and "451 4.3.0 try again later" in later.detail
    rejected = channel(starttls_server, ca_file).send(event())
    assert rejected.outcome is Outcome.PERMANENT and not rejected.disable_channel
    assert "554" in rejected.detail

    # Through the outbox: the 4xx attempt is retried and the message arrives once.
    handler.data_replies.append("421 4.4.2 busy")
    manager.register_handler("email", channel(starttls_server, ca_file))
    manager.notify("retried until accepted", event_type=EventType.CHECKPOINT_SAVED)
    manager.flush(10)  # each flush tries a pending message once: the first may be the 421
    assert states(manager) == [("delivered", None)]
    assert [parse(m.content)["Subject"] for m in handler.messages] == ["[INFO] retried until accepted"]


def test_a_message_too_big_for_the_relay_goes_again_without_its_chart(
    manager: NotificationManager,
    starttls_server: LoopbackController,
    handler: RecordingHandler,
    ca_file: str,
) -> None:
    too_big = "552 5.3.4 Message size exceeds fixed maximum message size"
    handler.data_replies.append(too_big)
    chart = Attachment("loss.png", "image/png", PNG)
    refused = channel(starttls_server, ca_file).send(event(attachments=(chart,)))
    assert refused.outcome is Outcome.PERMANENT and refused.attachment_refused and "552" in refused.detail
    handler.data_replies.append(too_big)  # without a chart a 552 is an ordinary refusal
    plain = channel(starttls_server, ca_file).send(event())
    assert plain.outcome is Outcome.PERMANENT and not plain.attachment_refused

    handler.data_replies.append(too_big)
    manager.register_handler("email", channel(starttls_server, ca_file))
    manager.emit(event(attachments=(chart,)))
    [(state, note)] = states(manager)
    assert state == "delivered" and note is not None and "without its attachment" in note
    [received] = handler.messages
    assert not [part for part in parse(received.content).walk() if part.get_content_type() == "image/png"]


def test_a_failures_subject_names_its_error_and_its_full_traceback_comes_last() -> None:
    failure = event(
        message="RuntimeError: CUDA error: device-side assert triggered\nat train.py:42 in training_step",
        context={
            "model": "resnet",
            "run_id": "r1",
            "error": "RuntimeError: CUDA error: device-side assert triggered" + " (more)" * 40,
            "traceback": 'Traceback (most recent call last):\n  File "train.py", line 42\nRuntimeError: CUDA',
        },
    )
    message = EmailNotifier("127.0.0.1", TO, USER, port=2525, security="none").compose(failure)
    subject = str(message["Subject"])
    assert subject.startswith("❌ resnet failed: RuntimeError: CUDA error: device-side assert triggered")
    assert len(subject) <= 120 and subject.endswith("…")
    text = message.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    assert body.splitlines()[1] == "RuntimeError: CUDA error: device-side assert triggered"
    assert body.index("Full traceback:\nTraceback (most recent call last):") > body.index("Run: r1")
    # Anything else keeps "[LEVEL] title".
    other = EmailNotifier("127.0.0.1", TO, USER, port=2525, security="none").compose(
        event(event_type=EventType.NAN_DETECTED, title="NaN/Inf loss: resnet")
    )
    assert other["Subject"] == "[ERROR] NaN/Inf loss: resnet"


def test_network_failures_are_retried(ca_file: str) -> None:
    # A port nobody listens on, and one that accepts but never greets (a hung relay).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = EmailNotifier("127.0.0.1", TO, USER, port=port, ca_file=ca_file, timeout=2).send(event())
    assert refused.outcome is Outcome.RETRY and "cannot reach" in refused.detail

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        hung = EmailNotifier(
            "127.0.0.1", TO, USER, port=silent.getsockname()[1], ca_file=ca_file, timeout=0.3
        ).send(event())
    assert hung.outcome is Outcome.RETRY and "timed out" in hung.detail.lower()


def test_server_without_starttls_is_never_used_in_clear(handler: RecordingHandler, ca_file: str) -> None:
    server = start_server(handler, security="starttls", offer_starttls=False, auth=False)
    try:
        result = channel(server, ca_file).send(event())
    finally:
        server.stop()
    assert result.outcome is Outcome.PERMANENT and result.disable_channel
    assert "does not offer STARTTLS" in result.detail
    assert handler.messages == [] and handler.auth_attempts == []


def test_plain_smtp_only_to_a_loopback_relay(handler: RecordingHandler) -> None:
    with pytest.raises(ConfigurationError, match=r"SMTP_SECURITY.*clear text.*smtp\.example\.org"):
        EmailNotifier("smtp.example.org", TO, USER, security="none")

    server = start_server(handler, security="none", auth=False)
    try:
        result = EmailNotifier("127.0.0.1", TO, USER, port=server.port, security="none").send(event())
    finally:
        server.stop()
    assert result.outcome is Outcome.DELIVERED
    assert len(handler.messages) == 1 and not handler.messages[0].tls


def test_check_logs_in_without_sending(
    starttls_server: LoopbackController, handler: RecordingHandler, ca_file: str
) -> None:
    assert channel(starttls_server, ca_file).check().ok
    bad = channel(starttls_server, ca_file, password="wrong-password").check()
    assert bad.outcome is Outcome.PERMANENT and bad.disable_channel
    assert handler.messages == [] and len(handler.auth_attempts) == 2


def test_from_env(ca_file: str) -> None:
    def build(**variables: str) -> EmailNotifier | None:
        return EmailNotifier.from_env(Env(variables, env_file=False))

    assert build() is None
    full = build(
        SMTP_HOST="smtp.example.org",
        SMTP_USER=USER,
        SMTP_PASSWORD=PASSWORD,
        TO_EMAILS=" alice@example.org, bob@example.org ,",
        SMTP_CA_FILE=ca_file,
    )
    assert full is not None
    assert (full.port, full.security, full.sender, full.recipients) == (587, "starttls", USER, tuple(TO))
    named = build(
        SMTP_HOST="h",
        TO_EMAILS="a@example.org",
        FROM_EMAIL="Training bot <bot@example.org>",
        SMTP_USER=USER,
        SMTP_PASSWORD=PASSWORD + "\n",
    )
    assert named is not None and (named.sender, named.sender_address) == (
        "Training bot <bot@example.org>",
        "bot@example.org",
    )
    assert named._password == PASSWORD  # the newline of a secret mounted from a file is dropped
    implicit = build(
        SMTP_HOST="smtp.example.org",
        TO_EMAILS="a@example.org",
        FROM_EMAIL="r@example.org",
        SMTP_SECURITY="SSL",
    )
    assert implicit is not None and (implicit.port, implicit.security) == (465, "ssl")
    assert full.status().configured and PASSWORD not in repr(full)

    bad = {
        "TO_EMAILS": {"SMTP_HOST": "smtp.example.org"},
        "SMTP_HOST": {"TO_EMAILS": "a@example.org"},
        "SMTP_PORT": {
            "SMTP_HOST": "h",
            "TO_EMAILS": "a@example.org",
            "FROM_EMAIL": "r@e.org",
            "SMTP_PORT": "x",
        },
        "FROM_EMAIL": {"SMTP_HOST": "h", "TO_EMAILS": "a@example.org", "SMTP_USER": "runs"},
        "SMTP_PASSWORD": {"SMTP_HOST": "h", "TO_EMAILS": "a@example.org", "SMTP_USER": USER},
        "SMTP_SECURITY": {
            "SMTP_HOST": "h",
            "TO_EMAILS": "a@example.org",
            "FROM_EMAIL": "r@e.org",
            "SMTP_SECURITY": "tls",
        },
        "SMTP_CA_FILE": {
            "SMTP_HOST": "h",
            "TO_EMAILS": "a@example.org",
            "FROM_EMAIL": "r@e.org",
            "SMTP_CA_FILE": "/nonexistent/ca.pem",
        },
    }
    for variable, variables in bad.items():
        with pytest.raises(ConfigurationError) as raised:
            build(**variables)
        assert raised.value.variable == variable

    with pytest.raises(ConfigurationError, match="TO_EMAILS"):
        build(SMTP_HOST="h", TO_EMAILS="a@example.org\r\nBcc: x@evil.example", FROM_EMAIL="r@e.org")


def test_password_never_shown(
    starttls_server: LoopbackController, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = EmailNotifier.from_env(
        Env(
            {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(starttls_server.port),
                "SMTP_USER": USER,
                "SMTP_PASSWORD": PASSWORD,
                "TO_EMAILS": ",".join(TO),
                "SMTP_CA_FILE": ca_file,
            },
            env_file=False,
        )
    )
    assert notifier is not None
    result = notifier.send(event())
    assert result.ok
    # A server reply that echoes the password (a badly written relay) is redacted too.
    from afs_callbacks.channels.email import classify_error

    echoed = classify_error(ssl.SSLError(1, f"handshake failed for {PASSWORD}"), notifier)
    shown = " ".join(
        [
            caplog.text,
            repr(notifier),
            notifier.describe(),
            str(notifier.status()),
            result.detail,
            echoed.detail,
        ]
    )
    assert PASSWORD not in shown and "***" in echoed.detail


def test_other_attachments_ride_along_and_hints_for_port_mixups(ca_file: str) -> None:
    notifier = EmailNotifier("smtp.example.org", TO, USER, ca_file=ca_file)
    csv = Attachment("metrics.csv", "text/csv", b"step,loss\n1,0.5\n")
    message = notifier.compose(event(attachments=(Attachment("loss.png", "image/png", PNG), csv)))
    assert message.get_content_type() == "multipart/mixed"
    body, attached = message.get_payload()  # type: ignore[misc]
    assert body.get_content_type() == "multipart/alternative"
    assert attached.get_filename() == "metrics.csv" and attached.get_content() == "step,loss\n1,0.5\n"

    from afs_callbacks.channels.email import classify_error

    starttls_on_465 = EmailNotifier("smtp.example.org", TO, USER, port=465, ca_file=ca_file)
    result = classify_error(TimeoutError("timed out"), starttls_on_465)
    assert result.outcome is Outcome.RETRY and "SMTP_SECURITY=ssl" in result.detail


def test_even_a_bare_completions_html_is_over_spamassassins_image_only_sizes(tmp_path: Path) -> None:
    """spamassassin's HTML_IMAGE_ONLY_* rules (up to 2.8 points) fire on an HTML part of at
    most 3,200 bytes with an image: a run with no epochs and no metrics carries enough."""
    pytest.importorskip("matplotlib")
    from afs_callbacks.integrations.loop import RunNotifier
    from afs_callbacks.testing import CapturingHandler

    captured = CapturingHandler()
    settings = Settings(state_dir=tmp_path / "state", console="never")
    with NotificationManager({"capture": captured}, settings=settings) as manager:
        with RunNotifier(manager, model_name="m", chart=True) as run:
            for step in range(20):
                run.step(loss=1.0 / (step + 1))
        manager.flush(30)
    [completion] = [e for e in captured.events if e.event_type is EventType.TRAINING_COMPLETED]
    assert completion.attachments
    message = EmailNotifier("127.0.0.1", TO, USER, port=2525, security="none").compose(completion)
    page = message.get_body(("html",))
    assert page is not None and len(page.get_content()) > 3200
