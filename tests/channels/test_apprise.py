"""Apprise channel, end to end with the real ``apprise`` package: manager -> outbox -> sender ->
AppriseNotifier -> Apprise's JSON plugin (``json://``) -> a loopback HTTP server."""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path

import pytest

from afs_callbacks import Attachment, EventType
from afs_callbacks.channels.apprise import AppriseNotifier, split_urls
from afs_callbacks.config import Env, Settings
from afs_callbacks.exceptions import ConfigurationError, MissingExtraError
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest, Reply
from tests.channels import support
from tests.channels.support import OUTBOX_FILES, assert_not_shown, assert_not_stored, flushed

pytest.importorskip(
    "apprise", reason="the apprise extra is not installed: pip install 'afs-callbacks[apprise]'"
)

PASSWORD = "appr1sePassw0rdXYZ"
TOKEN = "hooktoken0123456789abcdef"

REPO = Path(__file__).resolve().parents[2]


def json_url(receiver: LoopbackReceiver, path: str = f"/hook/{TOKEN}") -> str:
    return f"json://afs:{PASSWORD}@127.0.0.1:{receiver.port}{path}"


# The shared fixture, bound in this module so that pytest finds it for these tests.
manager = support.manager


def test_event_reaches_a_json_endpoint(manager: NotificationManager, receiver: LoopbackReceiver) -> None:
    manager.register_handler("apprise", AppriseNotifier([json_url(receiver)]))
    chart = Attachment("loss.png", "image/png", b"\x89PNG\r\n\x1a\nfake-png-bytes")
    manager.notify(
        "NaN loss: bert-tiny",
        "loss became NaN at step 120",
        EventType.NAN_DETECTED,
        attachments=[chart],
        model="bert-tiny",
        run_id="run-1",
        metrics={"loss": float("nan")},
    )
    assert flushed(manager) == ["delivered"]
    (request,) = receiver.wait_for(1)
    assert request.path == f"/hook/{TOKEN}"
    assert request.headers["Authorization"].startswith("Basic ")
    body = request.json()
    assert body["title"] == "NaN loss: bert-tiny"
    assert body["type"] == "failure"
    lines = body["message"].splitlines()
    assert lines[0] == "loss became NaN at step 120" and "Model: bert-tiny" in lines
    assert lines[-1] == "Metrics: loss=NaN"
    (attached,) = body["attachments"]
    assert attached["filename"] == "loss.png" and attached["mimetype"] == "image/png"
    assert base64.b64decode(attached["base64"]) == chart.data


# A real PNG's first bytes: Apprise's form plugin sends it as a file part.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def form_url(receiver: LoopbackReceiver, path: str = "/form") -> str:
    return f"form://127.0.0.1:{receiver.port}{path}"


def has_file(request: ReceivedRequest) -> bool:
    return b'filename="loss_curve.png"' in request.body


def test_form_and_json_both_get_the_chart_as_a_file(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    """Apprise's form plugin opens attachments by path: an in-memory one failed ("No such
    file or directory") and the message was retried for a day. The chart now travels as a
    real file in a private temporary folder."""
    manager.register_handler("apprise", AppriseNotifier([form_url(receiver), json_url(receiver)]))
    chart = Attachment("loss_curve.png", "image/png", PNG)
    manager.notify("Training completed: resnet", "done", EventType.TRAINING_COMPLETED, attachments=[chart])
    assert flushed(manager) == ["delivered"]
    form, sent_json = sorted(receiver.wait_for(2), key=lambda r: r.path)
    assert form.path == "/form" and form.headers["Content-Type"].startswith("multipart/form-data")
    assert has_file(form) and PNG in form.body
    (attached,) = sent_json.json()["attachments"]
    assert base64.b64decode(attached["base64"]) == PNG
    (delivery,) = manager.outbox.history()[0].deliveries
    assert delivery.attempts == 1 and not delivery.last_error


def test_a_service_that_refuses_the_attachment_gets_the_message_again_without_it_once(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    # The form endpoint takes no files (413); the JSON one takes the chart.
    receiver.responder = lambda request: Reply(413, b"no uploads here") if has_file(request) else None
    manager.register_handler("apprise", AppriseNotifier([form_url(receiver), json_url(receiver)]))
    chart = Attachment("loss_curve.png", "image/png", PNG)
    manager.notify("Training completed: resnet", "done", EventType.TRAINING_COMPLETED, attachments=[chart])
    assert flushed(manager) == ["delivered"]
    requests = receiver.wait_for(3)
    forms = [r for r in requests if r.path == "/form"]
    jsons = [r for r in requests if r.path != "/form"]
    assert [has_file(r) for r in forms] == [True, False]  # refused with it, taken without
    assert forms[1].status == 200 and b"done" in forms[1].body
    assert len(jsons) == 1 and jsons[0].json()["attachments"]  # never sent a second time
    (delivery,) = manager.outbox.history()[0].deliveries
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert "sent without its attachment" in (delivery.last_error or "")


def test_failed_delivery_is_retried_only_where_it_failed(
    manager: NotificationManager, receiver: LoopbackReceiver
) -> None:
    with LoopbackReceiver() as flaky:
        flaky.reply(Reply(500, b"down"))
        manager.register_handler("apprise", AppriseNotifier([json_url(receiver), json_url(flaky, "/other")]))
        manager.notify("done", event_type=EventType.TRAINING_COMPLETED)
        flaky.wait_for(2)
        manager.flush(10)
        (delivery,) = manager.outbox.history()[0].deliveries
        assert delivery.state == "delivered" and delivery.attempts == 2
    assert len(receiver.wait_for(1)) == 1  # the URL that worked the first time got it once
    assert receiver.requests[0].json()["type"] == "success"


def test_gives_up_when_the_message_is_too_old(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    receiver.default = Reply(503, b"unavailable")
    settings = Settings(
        # Transient failures are retried until the message is max_age old (not an attempt count).
        state_dir=tmp_path / "s",
        retry_base=0.01,
        retry_cap=0.02,
        max_age=0.5,
        console="never",
    )
    with NotificationManager(
        {"apprise": AppriseNotifier([json_url(receiver)])}, settings=settings
    ) as manager:
        manager.notify("t", event_type=EventType.CUSTOM)
        receiver.wait_for(2)
        manager.flush(5)
        (delivery,) = manager.outbox.history()[0].deliveries
    assert delivery.state == "dead"
    assert "json://***" in (delivery.last_error or "")


def test_several_urls_from_env(receiver: LoopbackReceiver) -> None:
    urls = f"{json_url(receiver, '/a')}, {json_url(receiver, '/b')}\n{json_url(receiver, '/c?x=1,2')}"
    assert split_urls(urls) == [json_url(receiver, p) for p in ("/a", "/b", "/c?x=1,2")]
    channel = AppriseNotifier.from_env(Env({"APPRISE_URLS": urls}, env_file=False))
    assert channel is not None and channel.describe() == "apprise json://***, json://***, json://***"
    assert AppriseNotifier.from_env(Env({}, env_file=False)) is None


def test_unknown_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AppriseNotifier(["nosuchservice://secretpart0123456789"])
    assert caught.value.variable == "APPRISE_URLS"
    assert "URL 1 (nosuchservice://***)" in str(caught.value)
    assert "secretpart0123456789" not in str(caught.value)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """apprise is installed here, so its absence is simulated by blocking the import."""
    monkeypatch.setitem(sys.modules, "apprise", None)
    with pytest.raises(MissingExtraError) as caught:
        AppriseNotifier.from_env(Env({"APPRISE_URLS": "json://127.0.0.1/x"}, env_file=False))
    # Run from this checkout, so the hint is the checkout's (tests/test_install_hints.py
    # checks the wheel's).
    assert (
        str(caught.value)
        == f"The Apprise channel needs the 'apprise' extra: pip install -e '{REPO}[apprise]'"
    )


def test_manager_reports_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Same simulated absence, seen through the manager: the channel is reported, not fatal."""
    monkeypatch.setitem(sys.modules, "apprise", None)
    manager = NotificationManager.from_env(
        {"APPRISE_URLS": "json://127.0.0.1/x", "AFS_STATE_DIR": str(tmp_path)}, channels=["apprise"]
    )
    try:
        assert f"pip install -e '{REPO}[apprise]'" in manager.config_errors["apprise"]
    finally:
        manager.close(timeout=0)


def test_urls_never_leak(
    manager: NotificationManager, receiver: LoopbackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # Apprise logs request URLs at DEBUG
    url = json_url(receiver)
    receiver.reply(Reply(500, f"error for {TOKEN}".encode()))
    channel = AppriseNotifier([url])
    manager.register_handler("apprise", channel)
    manager.notify("t", "m", EventType.CUSTOM)
    receiver.wait_for(2)
    manager.flush(5)
    assert manager.outbox.history()[0].deliveries[0].state == "delivered"
    assert any(record.name == "apprise" for record in caplog.records)  # its own records checked too
    manager.close(timeout=1)
    assert_not_shown((caplog.text, repr(channel), str(manager.status())), url, PASSWORD, TOKEN)
    assert_not_stored(manager.state_dir, url, PASSWORD, TOKEN, pattern=OUTBOX_FILES)
