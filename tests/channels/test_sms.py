"""SMS through Twilio, against a loopback server that answers as Twilio's REST API documents:
201 with a message resource, 400 with an error ``code`` (21211 invalid number, 21608
unverified on a trial account), 401 with 20003, 429 and 5xx."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator

import pytest

from afs_callbacks.channels.base import Outcome
from afs_callbacks.channels.sms import GSM7_SEGMENT, UCS2_SEGMENT, SmsNotifier, gsm7_length
from afs_callbacks.config import Env
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.outcome import Outcome as RunOutcome
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f00dfeedc0ffee1234567890abcdef99"
FROM = "+15005550006"
ALICE, BOB, CAROL = "+14155550101", "+14155550102", "+447700900123"
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"

manager_for = support.manager_for


def twilio(answers: dict[str, Callable[[int], Reply]] | None = None) -> Callable[[ReceivedRequest], Reply]:
    """Twilio's Messages API: checks the basic auth, answers 201 with a message resource, or
    what ``answers`` says for a recipient (called with that recipient's attempt number)."""
    attempts: dict[str, int] = {}
    expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()

    def respond(request: ReceivedRequest) -> Reply:
        if request.headers.get("Authorization") != expected:
            return Reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if request.method == "GET":
            return Reply(200, {"sid": SID, "status": "active"})
        form = _form(request)
        to = form["To"]
        attempts[to] = attempts.get(to, 0) + 1
        if answers and to in answers:
            return answers[to](attempts[to])
        return Reply(
            201, {"sid": f"SM{len(attempts):032d}", "status": "queued", "to": to, "body": form["Body"]}
        )

    return respond


def _form(request: ReceivedRequest) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(request.body.decode("utf-8")))


def error(status: int, code: int, message: str) -> Callable[[int], Reply]:
    return lambda attempt: Reply(status, {"code": code, "message": message, "status": status})


@pytest.fixture
def server() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(responder=twilio()) as receiver:
        yield receiver


def channel(receiver: LoopbackReceiver, *to: str, **options: object) -> SmsNotifier:
    return SmsNotifier(SID, TOKEN, FROM, to or (ALICE,), api_url=receiver.url(""), **options)  # type: ignore[arg-type]


def alert(
    title: str = "NaN loss in run-7", message: str = "loss became NaN at step 1200"
) -> NotificationEvent:
    return NotificationEvent(EventType.NAN_DETECTED, NotificationLevel.ERROR, title, message)


def to_numbers(receiver: LoopbackReceiver) -> list[str]:
    return [_form(request)["To"] for request in receiver.requests if request.method == "POST"]


def test_one_request_per_recipient_with_basic_auth_and_the_documented_form(server: LoopbackReceiver) -> None:
    result = channel(server, ALICE, BOB).send(alert())

    assert result.ok and "2 of 2" in result.detail
    assert [r.path for r in server.requests] == [MESSAGES, MESSAGES]
    forms = [_form(request) for request in server.requests]
    assert [form["To"] for form in forms] == [ALICE, BOB]
    assert {form["From"] for form in forms} == {FROM}
    assert forms[0]["Body"] == "ERROR: NaN loss in run-7 - loss became NaN at step 1200"
    assert server.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_long_message_fits_one_gsm7_segment_and_unicode_one_ucs2_segment(server: LoopbackReceiver) -> None:
    sms = channel(server)
    long_body = sms.body(alert(message="“loss” — diverged " * 40))
    unicode_body = sms.body(alert(title="模型 run-7 失败", message="显存不足 " * 40))

    assert gsm7_length(long_body) is not None and gsm7_length(long_body) <= GSM7_SEGMENT
    assert long_body.endswith("...") and '"loss" - diverged' in long_body
    assert gsm7_length(unicode_body) is None and len(unicode_body) <= UCS2_SEGMENT


def test_invalid_and_unverified_numbers_are_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    answers = {
        BOB: error(400, 21211, f"The 'To' number {BOB} is not a valid phone number."),
        CAROL: error(400, 21608, "The number is unverified. Trial accounts cannot send messages to it."),
    }
    with LoopbackReceiver(responder=twilio(answers)) as receiver:
        sms = channel(receiver, ALICE, BOB, CAROL)
        first = sms.send(alert())
        second = sms.send(alert("second"))

    assert first.ok and "1 of 3" in first.detail and "21211" in first.detail and "21608" in first.detail
    assert second.ok and not second.disable_channel
    # The refused numbers got one try each; Alice got both messages.
    assert to_numbers(receiver) == [ALICE, BOB, CAROL, ALICE]
    assert set(sms.refused) == {BOB, CAROL}
    assert BOB not in caplog.text  # numbers are shortened in logs


def test_a_retry_goes_only_to_the_recipients_that_do_not_have_the_event() -> None:
    flaky = {BOB: lambda attempt: Reply(503, "busy") if attempt == 1 else Reply(201, {"sid": "SM2"})}
    with LoopbackReceiver(responder=twilio(flaky)) as receiver:
        sms = channel(receiver, ALICE, BOB)
        event = alert()
        first = sms.send(event)
        second = sms.send(event)  # the sender's retry of the same event

    assert first.outcome is Outcome.RETRY
    assert second.ok
    assert to_numbers(receiver) == [ALICE, BOB, BOB]  # Alice was not texted twice


def test_429_is_retried_with_its_hint() -> None:
    limited = {
        ALICE: lambda attempt: Reply(
            429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "7"}
        )
    }
    with LoopbackReceiver(responder=twilio(limited)) as receiver:
        result = channel(receiver).send(alert())

    assert result.outcome is Outcome.RETRY and result.retry_after == 7.0


def test_wrong_credentials_disable_the_channel_and_never_show_the_token() -> None:
    with LoopbackReceiver(responder=twilio()) as receiver:
        wrong = SmsNotifier(SID, "0" * 32, FROM, [ALICE], api_url=receiver.url(""))
        result = wrong.send(alert())
        probe = wrong.check()

    assert result.outcome is Outcome.PERMANENT and result.disable_channel and "20003" in result.detail
    assert not probe.ok and probe.disable_channel
    assert "0" * 32 not in result.detail + probe.detail


def test_check_reads_the_account_without_sending(server: LoopbackReceiver) -> None:
    result = channel(server).check()

    assert result.ok and "active" in result.detail
    assert [(r.method, r.path) for r in server.requests] == [("GET", f"/2010-04-01/Accounts/{SID}.json")]


def test_only_errors_are_texted_by_default_but_a_test_message_is(server: LoopbackReceiver) -> None:
    sms = channel(server)
    info = NotificationEvent(EventType.EPOCH_COMPLETED, NotificationLevel.INFO, "epoch done")
    test = NotificationEvent(EventType.TEST, NotificationLevel.INFO, "Test")

    assert sms.send(info).ok and server.requests == []
    assert sms.send(test).ok and len(server.requests) == 1


def env_of(receiver: LoopbackReceiver, **extra: str) -> Env:
    values = {
        "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": FROM,
        "SMS_TO_NUMBERS": f"{ALICE}, +1 (415) 555-0102",
        "TWILIO_API_URL": receiver.url(""),
        **extra,
    }
    return Env(values, env_file=False)


def test_from_env_reads_the_numbers_and_min_level(server: LoopbackReceiver) -> None:
    sms = SmsNotifier.from_env(env_of(server, SMS_MIN_LEVEL="warning"))

    assert sms is not None and sms.to_numbers == [ALICE, BOB] and sms.min_level is NotificationLevel.WARNING
    assert TOKEN not in repr(sms) and ALICE not in sms.describe()
    assert SmsNotifier.from_env(Env({}, env_file=False)) is None


@pytest.mark.parametrize(
    ("variable", "value", "wanted"),
    [
        ("SMS_TO_NUMBERS", "4155550101", "E.164"),
        ("SMS_TO_NUMBERS", "+1415555010x", "E.164"),
        ("TWILIO_FROM_NUMBER", "twilio", "E.164"),
        ("TWILIO_ACCOUNT_SID", "SK123", "AC followed by 32 hex"),
        ("TWILIO_AUTH_TOKEN", "short", "does not look like"),
        ("TWILIO_FROM_NUMBER", "", "is needed when"),
    ],
)
def test_bad_values_name_the_variable(
    server: LoopbackReceiver, variable: str, value: str, wanted: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SmsNotifier.from_env(env_of(server, **{variable: value}))

    assert caught.value.variable == variable and wanted in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_through_the_manager_only_errors_reach_the_phone(server: LoopbackReceiver) -> None:
    sms = SmsNotifier.from_env(env_of(server))
    assert sms is not None
    manager: NotificationManager = NotificationManager({"sms": sms})
    try:
        manager.notify("epoch 1 done", "fine", EventType.EPOCH_COMPLETED, level=NotificationLevel.INFO)
        manager.notify("NaN loss", "at step 3", EventType.NAN_DETECTED, level=NotificationLevel.ERROR)
        manager.flush(10)
        server.wait_for(2)
    finally:
        manager.close(timeout=1)
    bodies = [_form(request)["Body"] for request in server.requests]
    assert bodies == ["ERROR: NaN loss - at step 3"] * 2


def test_the_token_is_masked_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {ALICE: lambda attempt: Reply(400, {"code": 21604, "message": f"bad request with {TOKEN}"})}
    with LoopbackReceiver(responder=twilio(echo)) as receiver:
        result = channel(receiver).send(alert())

    assert result.outcome is Outcome.PERMANENT and TOKEN not in result.detail
    assert TOKEN not in caplog.text


# The end of a run texts by its outcome's level -------------------------------------------
# Until the tracker puts ``context["outcome"]`` on every end event (the outcome helper's
# branch), these events carry it explicitly, as that tracker will.


@pytest.mark.parametrize(
    ("outcome", "texted"),
    [
        ("stopped_on_problem", True),  # a NaN stop: an error, whatever the event's own level
        ("killed", True),
        ("completed_with_warnings", False),
        ("completed", False),
        ("interrupted", False),
    ],
)
def test_an_end_is_texted_by_its_outcomes_level(
    manager_for: Callable[..., NotificationManager], server: LoopbackReceiver, outcome: str, texted: bool
) -> None:
    manager = manager_for(channel(server))  # SMS_MIN_LEVEL's default: error
    event = NotificationEvent(
        EventType.TRAINING_COMPLETED,
        NotificationLevel.WARNING,  # what a training sends a NaN stop with before outcomes
        "Training stopped on a problem: resnet",
        "val_loss became NaN at step 8 (epoch 1).",
        {"run_id": "r1", "model": "resnet", "outcome": outcome},
    )
    manager.emit(event)
    manager.flush(5)
    bodies = [_form(request)["Body"] for request in server.requests if request.method == "POST"]
    if texted:
        [body] = bodies
        assert body.startswith(
            f"{RunOutcome.parse(outcome).level.value.upper()}: Training stopped on a problem"
        )
    else:
        assert bodies == []


def test_a_failure_is_texted_with_its_lead_never_its_frames(server: LoopbackReceiver) -> None:
    failure = NotificationEvent(
        EventType.TRAINING_FAILED,
        NotificationLevel.ERROR,
        "Training failed: resnet",
        "RuntimeError: CUDA error\nat train.py:42 in training_step (epoch 2, step 120)\n\n"
        "Traceback, most recent call first:\n  train.py:42 in training_step\n      loss = model(x)",
    )
    assert channel(server).send(failure).ok
    body = _form(server.requests[0])["Body"]
    assert body == (
        "ERROR: Training failed: resnet - RuntimeError: CUDA error at train.py:42 in training_step"
        " (epoch 2, step 120)"
    )
