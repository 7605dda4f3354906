"""Redaction: registered secrets and secret-shaped text never reach logs, errors or history."""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import socket
import uuid
from collections.abc import Callable
from urllib.parse import quote

import pytest
from helpers.hook import HookChannel

from afs_callbacks import DeliveryResult, EventType, NotificationEvent, NotificationLevel
from afs_callbacks._log import get_logger
from afs_callbacks.channels import channel_classes
from afs_callbacks.channels._http import HttpChannel
from afs_callbacks.redaction import (
    MASK,
    RedactingFilter,
    mask,
    mask_url,
    redact,
    register_secret,
    registered_secrets,
)
from afs_callbacks.testing import LoopbackReceiver, Reply


def unique_token() -> str:
    # The registry is process-wide: each test uses tokens no other test registers.
    return "tok" + uuid.uuid4().hex


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_registered_secret_is_masked_anywhere_in_text() -> None:
    token = unique_token()
    register_secret(token)
    assert token in registered_secrets()
    assert redact(f"login failed for {token}!") == f"login failed for {MASK}!"
    assert redact(ValueError(f"bad {token}")) == f"bad {MASK}"


def test_short_or_empty_values_are_not_registered() -> None:
    register_secret("abc", "", None)
    assert redact("abc and abcdef") == "abc and abcdef"
    assert "abc" not in registered_secrets()


def test_longest_secret_is_masked_first_so_nothing_of_it_remains() -> None:
    token = unique_token()
    url = f"https://relay.example.com/in/{token}"
    register_secret(token, url)
    assert redact(f"posting to {url} failed") == f"posting to {MASK} failed"


def test_a_registered_url_is_masked_when_only_its_path_is_shown() -> None:
    """requests' errors show 'url: /path?query' without scheme and host."""
    token = unique_token()
    register_secret(f"http://127.0.0.1:9/hook/{token}?sig=abc123")
    text = f"Max retries exceeded with url: /hook/{token}?sig=abc123 (Caused by ConnectionRefused)"
    assert token not in redact(text)


SHAPES = [
    ("https://hooks.slack.com/services/T0AAA/B0BBB/XyZ123abc", "XyZ123abc"),
    ("with url: /services/T0AAA/B0BBB/XyZ123abc (Caused", "XyZ123abc"),
    ("https://discord.com/api/webhooks/123456/aBcD-token_x?wait=true", "aBcD-token_x"),
    ("https://api.telegram.org/bot123456:AAH-secret_Tok/sendMessage", "AAH-secret_Tok"),
    ("https://x.logic.azure.com/workflows/1/triggers?api-version=1&sig=S1gNaTuRe%3D&sp=x", "S1gNaTuRe"),
    ("https://ntfy.example.com/topic?token=tk_abcdef", "tk_abcdef"),
    ("https://user:hunter2pass@smtp.example.com:465", "hunter2pass"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGci"),
]


@pytest.mark.parametrize(("text", "secret"), SHAPES)
def test_secret_shaped_text_is_masked_without_registration(text: str, secret: str) -> None:
    channel_classes()  # each service's shapes are declared by its channel class
    cleaned = redact(text)
    assert secret not in cleaned
    assert MASK in cleaned


def test_ordinary_text_is_left_alone() -> None:
    text = "epoch 3: loss=0.1234, acc=0.91 on host gpu-01 (see /var/log/train.log)"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, ""), ("", ""), ("short", MASK), ("abcdefghijkl", MASK), ("abcdefghijklm", MASK + "jklm")],
)
def test_mask_shows_at_most_the_last_four_characters_of_long_secrets(value: str | None, shown: str) -> None:
    assert mask(value) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T/B/X", "https://hooks.slack.com/***"),
        ("https://user:pw@smtp.example.com:465/x", "https://smtp.example.com:465/***"),
        ("https://example.com?sig=abc", "https://example.com/***"),
        ("https://user:pw@/path", MASK),
        ("not a url at all", MASK),
        (None, ""),
    ],
)
def test_mask_url_keeps_scheme_and_host_only(url: str | None, shown: str) -> None:
    assert mask_url(url) == shown


def test_logging_filter_redacts_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    token = unique_token()
    register_secret(token)
    logger = get_logger("afs_callbacks.tests.redaction")
    assert any(isinstance(f, RedactingFilter) for f in logger.filters)
    with caplog.at_level(logging.INFO, logger="afs_callbacks"):
        logger.info("sending to %s", f"https://relay.example.com/{token}")
        try:
            raise ConnectionError(f"cannot reach https://relay.example.com/{token}")
        except ConnectionError:
            logger.exception("delivery failed")
    assert "sending to https://relay.example.com/***" in caplog.text
    # The traceback is kept (it is how a bug gets found), redacted.
    assert "ConnectionError: cannot reach https://relay.example.com/***" in caplog.text
    assert token not in caplog.text
    for record in caplog.records:
        assert token not in record.getMessage()


def test_logging_filter_survives_a_broken_format_string() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert RedactingFilter().filter(record) is True


def test_urllib3_debug_logging_of_paths_is_turned_down() -> None:
    get_logger("afs_callbacks.tests.urllib3")
    assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.WARNING


def test_delivery_result_detail_is_redacted() -> None:
    token = unique_token()
    register_secret(token)
    assert token not in DeliveryResult.retry(f"HTTP 500 from /{token}").detail
    assert token not in DeliveryResult.permanent(f"HTTP 404 from /{token}").detail


def test_connection_error_text_from_requests_is_redacted_by_http_channel() -> None:
    """A real requests ConnectionError: its text holds the URL path with the token."""
    token = unique_token()
    channel = HookChannel(f"http://127.0.0.1:{closed_port()}/hook/{token}", timeout=2.0)
    event = NotificationEvent(EventType.TEST, NotificationLevel.INFO, "test")
    result = channel.send(event)
    assert result.outcome.value == "retry"
    assert result.detail.startswith("ConnectionError: ")
    assert "Max retries exceeded" in result.detail  # the useful part of the text is kept
    assert token not in result.detail
    assert token not in repr(channel) and "127.0.0.1" in repr(channel)


class _UnregisteredHook(HookChannel):
    """A channel that forgot to register its URL: the patterns must still catch it."""

    def __init__(self, url: str) -> None:
        HttpChannel.__init__(self, timeout=2.0)
        self.url = url


def test_unregistered_slack_path_in_requests_error_is_redacted() -> None:
    channel = _UnregisteredHook(f"http://127.0.0.1:{closed_port()}/services/T0UNREG/B0UNREG/NotRegisteredTok")
    result = channel.send(NotificationEvent(EventType.TEST, NotificationLevel.INFO, "test"))
    assert result.detail.startswith("ConnectionError: ")
    assert "NotRegisteredTok" not in result.detail


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: text,
        lambda text: json.dumps({"echo": text}).replace("/", "\\/"),
        lambda text: json.dumps({"echo": text}, ensure_ascii=True).replace("&", "\\u0026"),
        lambda text: quote(text, safe=""),
        lambda text: re.sub("%[0-9A-F]{2}", lambda hexa: hexa.group(0).lower(), quote(text, safe="")),
        lambda text: html.escape(text),
        lambda text: text.replace("&", "&#38;").replace("/", "&#x2F;"),
    ],
    ids=["plain", "json-slashes", "json-unicode", "percent", "percent-lower", "html", "html-numeric"],
)
def test_a_registered_url_and_its_parts_are_masked_in_every_encoding(encode: Callable[[str], str]) -> None:
    token, sig, password = unique_token(), "S1g" + uuid.uuid4().hex, "pw/" + uuid.uuid4().hex[:10]
    url = f"https://user:{quote(password, safe='')}@hooks.example.org/in/{token}?api-version=1&sig={sig}"
    register_secret(url)

    for shown in (url, f"url: /in/{token}?api-version=1&sig={sig}", token, sig, password):
        cleaned = redact(encode(shown))
        for secret in (token, sig, password, quote(password, safe="")):
            assert secret not in cleaned and quote(secret, safe="") not in cleaned
        assert MASK in cleaned


def test_bearer_and_basic_credentials_are_masked_as_bare_values() -> None:
    bearer = unique_token()
    basic = base64.b64encode(f"bot:{bearer[::-1]}".encode()).decode()
    register_secret(f"Bearer {bearer}", f"Basic {basic}")

    text = redact(f'{{"auth": "{bearer}", "basic": "{basic}", "password": "{bearer[::-1]}"}}')

    assert bearer not in text and basic not in text and bearer[::-1] not in text


def test_a_body_is_redacted_before_it_is_cut(receiver: LoopbackReceiver) -> None:
    token = unique_token()
    register_secret(f"http://127.0.0.1:{receiver.port}/hook/{token}")
    receiver.reply(Reply(400, "x" * 290 + f" echo: {token} " + "y" * 100))

    class Plain(HttpChannel):
        def send(self, event: NotificationEvent) -> DeliveryResult:
            return self.deliver(receiver.url(f"/hook/{token}"), json={})

    event = NotificationEvent(EventType.CUSTOM, NotificationLevel.INFO, "t")
    detail = Plain().send(event).detail

    # Cut first, the detail would end in the token's first characters.
    assert token[:8] not in detail and detail.startswith("HTTP 400: xxx")


def test_a_short_word_at_the_end_of_a_bot_token_is_not_masked_everywhere() -> None:
    """A token's tail is registered on its own only when it is as long as a real one: a
    test's ``xoxb-1-2-value`` masked the word "value" in every later message (the rule
    tests' context key came out as ``***``)."""
    from afs_callbacks.channels.slack import SlackNotifier

    SlackNotifier(channel="C1", bot_token="xoxb-1-2-value")
    assert redact("a value, the value") == "a value, the value"
    assert "xoxb-1-2-value" not in redact("token xoxb-1-2-value")  # the whole token still is
    real_tail = "A1b2C3d4E5f6G7h8I9j0K1l2"
    SlackNotifier(channel="C1", bot_token=f"xoxb-11-22-{real_tail}")
    assert real_tail not in redact(f"invalid_auth for {real_tail}")
