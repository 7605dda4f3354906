"""A failure leads with its error on every channel: real trainings (Lightning, the Hugging
Face Trainer, Keras on torch) whose own code raises from deep in the user's code. Each
run's TRAINING_FAILED goes through the real outbox and senders to every text channel,
each pointed at a loopback service (an aiosmtpd SMTP server for email); what each service
received is read back, and the first line a person reads under the title must be the
error, within the service's limit, with the middle of the frames cut, never the error.

The desktop bubble, read back from a real dunst, is in ``tests/channels/test_dunst.py``.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings, watch
from afs_callbacks.channels.discord import DiscordNotifier
from afs_callbacks.channels.email import EmailNotifier
from afs_callbacks.channels.ntfy import MAX_REQUEST_BYTES, NtfyNotifier
from afs_callbacks.channels.slack import SlackNotifier
from afs_callbacks.channels.sms import GSM7_SEGMENT, SmsNotifier
from afs_callbacks.channels.teams import MAX_PAYLOAD_BYTES, TeamsNotifier
from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.testing import LoopbackReceiver, ReceivedRequest

pytestmark = [
    pytest.mark.slow,
    # Keras' torch backend converts tensors with a NumPy 1 idiom; not this project's concern.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

#: User frames between the framework's call and the raise: long enough that every
#: channel has to cut the frames.
DEPTH = 80
MESSAGE = "CUDA error: device-side assert triggered (label 7 is out of range for 4 classes)"
ERROR = f"RuntimeError: {MESSAGE}"
HERE = Path(__file__).name
WHERE = re.compile(rf"^at \S*{re.escape(HERE)}:\d+ in descend \((epoch \d+, )?step \d+\)$")

SLACK = "/services/T0AFS/B0AFS/s3cr3tSlackHookPath"
DISCORD = "/api/webhooks/112233445566778899/dIsCoRdToKeN_0123456789abcdefSECRET"
TELEGRAM_TOKEN = "123456789:AAHsecretTOKENabcdefghijklmnopqrstu"
TEAMS = "/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke?api-version=1&sig=S1gnatureS3cretValue0123"
SID = "AC" + "0123456789abcdef" * 2


def descend(depth: int) -> None:
    """The user's own code, ``depth`` calls deep, then the error. Two call sites in turn: a
    frame repeated as such would be told once, as Python's traceback does."""
    if depth == 0:
        raise RuntimeError(MESSAGE)
    if depth % 2:
        descend(depth - 1)
    else:
        descend(depth - 1)


# The trainings ------------------------------------------------------------------------


def lightning_failure(manager: NotificationManager, root: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    from afs_callbacks.integrations.lightning import AFSNotify
    from tests.integrations.test_lightning import TinyModel, make_trainer

    class Failing(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 2:
                descend(DEPTH)
            return super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="device-side assert"):
        make_trainer(root, AFSNotify(manager, model_name="resnet")).fit(Failing())


def transformers_failure(manager: NotificationManager, root: Path) -> None:
    pytest.importorskip("transformers")
    from afs_callbacks.integrations.transformers import AFSNotify
    from tests.integrations.test_transformers import Regressor, make_trainer

    class Failing(Regressor):
        def forward(self, x: Any, labels: Any = None) -> Any:
            if self.training and self.steps == 2:
                descend(DEPTH)
            return super().forward(x, labels)

    trainer = make_trainer(root, AFSNotify(manager, model_name="resnet"), Failing())
    with pytest.raises(RuntimeError, match="device-side assert"), watch():
        trainer.train()


def keras_failure(manager: NotificationManager, root: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")
    from afs_callbacks.integrations.keras import AFSNotify
    from tests.integrations.test_keras import Misbehave, fit, make_model

    class Failing(Misbehave):  # type: ignore[misc,valid-type]
        def call(self, inputs: Any, training: bool = False) -> Any:
            if training:
                self.calls += 1
                if self.calls == 3:
                    descend(DEPTH)
            return inputs

    with pytest.raises(RuntimeError, match="device-side assert"), watch():
        fit(make_model(misbehave=Failing()), AFSNotify(manager, model_name="resnet"))


TRAININGS = {"lightning": lightning_failure, "transformers": transformers_failure, "keras": keras_failure}


# Every channel, on loopback ---------------------------------------------------------------


@dataclass
class Delivered:
    """What one failed run sent: the event as stored, the HTTP requests, the emails."""

    event: NotificationEvent
    requests: list[ReceivedRequest]
    mails: list[bytes]
    channels: dict[str, Any]

    def request(self, path_prefix: str, needle: bytes = b"most recent call first") -> ReceivedRequest:
        """The failure's message to the service at ``path_prefix`` (not its start, nor the
        run's live card, which shows the error too but no frames)."""
        found = [r for r in self.requests if r.path.startswith(path_prefix) and needle in r.body]
        assert len(found) == 1, [r.path for r in self.requests]
        return found[0]


@pytest.fixture(scope="module", params=sorted(TRAININGS))
def failure(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivered]:
    from tests.channels.email_smtp_server import RecordingHandler, start_server

    root = tmp_path_factory.mktemp(request.param)
    handler = RecordingHandler()
    smtp = start_server(handler, security="none", auth=False)
    with LoopbackReceiver() as receiver:
        channels: dict[str, Any] = {
            "slack": SlackNotifier(receiver.url(SLACK)),
            "discord": DiscordNotifier(receiver.url(DISCORD)),
            "telegram": TelegramNotifier(TELEGRAM_TOKEN, "-1001234567890", api_url=receiver.url("/tg")),
            "teams": TeamsNotifier(receiver.url(TEAMS)),
            "ntfy": NtfyNotifier("afs-runs", server=receiver.url("/ntfy")),
            "sms": SmsNotifier(SID, "f00dfeedc0ffee1234567890abcdef99", "+15005550006", ["+15005550009"],
                               api_url=receiver.url("/twilio")),
            "webhook": WebhookNotifier(receiver.url("/hook")),
            "email": EmailNotifier("127.0.0.1", ["researcher@example.org"], "runs@example.org",
                                   port=smtp.port, security="none"),
        }  # fmt: skip
        settings = Settings(state_dir=root / "state", console="never")
        with NotificationManager(dict(channels), settings=settings) as manager:
            TRAININGS[request.param](manager, root)
            report = manager.flush(30)
            assert report.pending == 0 and report.dead == 0, report
            entries = manager.outbox.history(limit=100)
        smtp.stop()
        [event] = [e.event for e in entries if e.event.event_type is EventType.TRAINING_FAILED]
        yield Delivered(event, list(receiver.requests), [m.content for m in handler.messages], channels)


def lead(text: str) -> list[str]:
    """The first two lines of a message body: the error, then where it happened."""
    return text.strip().splitlines()[:2]


def assert_leads_with_the_error(body: str) -> None:
    first, where = lead(body)
    assert first == ERROR
    assert WHERE.match(where), where
    assert "^^^" not in body  # no caret lines


# The event itself ---------------------------------------------------------------------------


def test_the_message_leads_with_the_error_then_the_users_frames_with_frameworks_folded(failure):
    message = failure.event.message
    assert_leads_with_the_error(message)
    assert failure.event.context["error"] == ERROR
    assert "Traceback, most recent call first:" in message
    assert re.search(r"… \d+ frames? in [a-z_, -]*(lightning|transformers|keras|torch)", message), message
    assert f"{HERE}" in message and "in descend" in message
    assert "site-packages" not in message  # library frames are folded, never listed


def test_the_full_traceback_is_kept_in_the_context_for_the_history(failure):
    full = failure.event.context["traceback"]
    assert full.startswith("Traceback (most recent call last):") and MESSAGE in full
    assert "site-packages" in full  # Python's own text, the frameworks' frames included


# Each service, what a person sees first ---------------------------------------------------------


def test_slack_section_and_notification_text(failure):
    payload = failure.request(SLACK).json()
    header, _context, section = payload["blocks"][:3]
    assert header["type"] == "header" and "Training failed" in header["text"]["text"]
    text = section["text"]["text"]
    assert len(text) <= SlackNotifier.SECTION_LIMIT
    assert_leads_with_the_error(html.unescape(text))
    assert "lines cut" in text  # the frames did not fit: their middle went
    assert payload["text"].splitlines()[1] == ERROR  # the phone's notification preview


def test_discord_embed_description(failure):
    [embed] = failure.request(DISCORD).json()["embeds"]
    assert len(embed["description"]) <= DiscordNotifier.DESCRIPTION_LIMIT
    assert_leads_with_the_error(embed["description"])


def test_telegram_text_and_a_captions_limit(failure):
    text = failure.request("/tg").json()["text"]
    assert len(text) <= TelegramNotifier.TEXT_LIMIT
    title, body = text.split("\n\n", 1)
    assert "Training failed" in title
    assert_leads_with_the_error(html.unescape(body))
    # With a chart the text is a caption, a quarter of the room: the error line still leads.
    caption = failure.channels["telegram"].fitted(failure.event, TelegramNotifier.CAPTION_LIMIT)
    assert len(caption) <= TelegramNotifier.CAPTION_LIMIT
    assert_leads_with_the_error(html.unescape(caption.split("\n\n", 1)[1]))


def test_teams_card(failure):
    request = failure.request("/workflows/")
    assert len(request.body) <= MAX_PAYLOAD_BYTES
    card = request.json()["attachments"][0]["content"]
    assert "Training failed" in card["body"][0]["text"]
    assert_leads_with_the_error(card["body"][1]["inlines"][0]["text"])


def test_ntfy_notification(failure):
    request = failure.request("/ntfy")
    assert len(request.body) <= MAX_REQUEST_BYTES
    assert_leads_with_the_error(request.json()["message"])


def test_sms_is_one_segment_with_the_error_after_the_title(failure):
    form = parse_qs(failure.request("/twilio", b"RuntimeError").body.decode())
    [body] = form["Body"]
    assert len(body) <= GSM7_SEGMENT
    # The title may lead with its outcome's icon ("❌ Training failed: ...").
    assert re.match(r"ERROR: (\S+ )?Training failed: resnet - " + re.escape(ERROR[:40]), body), body
    assert "Traceback" not in body  # the lead only: never frames on a phone


def test_webhook_payload_has_the_message_and_the_full_traceback(failure):
    sent = failure.request("/hook").json()
    assert_leads_with_the_error(sent["message"])
    assert sent["context"]["traceback"] == failure.event.context["traceback"]
    assert sent["context"]["error"] == ERROR


def test_email_subject_names_the_error_and_the_body_leads_with_it(failure):
    [raw] = [m for m in failure.mails if b"X-AFS-Event: training_failed" in m]
    mail = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert mail["Subject"].startswith("❌ resnet failed: RuntimeError: CUDA error: device-side assert")
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    shown, _, full = text.partition("\n\nFull traceback:\n")
    assert re.fullmatch(r"ERROR: (\S+ )?Training failed: resnet", shown.splitlines()[0])
    assert_leads_with_the_error("\n".join(shown.splitlines()[1:]))
    assert full.startswith("Traceback (most recent call last):")  # below, for the record
    page = mail.get_body(("html",)).get_content()
    assert f"<strong>{html.escape(ERROR)}</strong>" in page
    assert page.index(html.escape(ERROR)) < page.index("Full traceback")


def test_nothing_shown_is_over_its_service_limit_even_for_a_long_error(failure):
    """An error line longer than a service's limit is itself cut at its end; the type and
    the start of the message stay."""
    long_error = failure.event.with_changes(
        message=f"RuntimeError: {'x' * 5000}\nat train.py:1 in training_step\n\n{failure.event.message}"
    )
    slack = failure.channels["slack"].payload(long_error)["blocks"][2]["text"]["text"]
    assert len(slack) <= SlackNotifier.SECTION_LIMIT and slack.startswith("RuntimeError: xxx")
    caption = failure.channels["telegram"].fitted(long_error, TelegramNotifier.CAPTION_LIMIT)
    assert len(caption) <= TelegramNotifier.CAPTION_LIMIT and "RuntimeError: xxx" in caption
    assert json.loads(failure.channels["ntfy"].encode(long_error))["message"].startswith("RuntimeError: xxx")
    assert len(failure.channels["teams"].encode(long_error)) <= MAX_PAYLOAD_BYTES
