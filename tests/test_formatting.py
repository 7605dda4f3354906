"""Shared text helpers: cutting to service limits, durations, metrics, fields, colours."""

from __future__ import annotations

import html
import math
import uuid

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import (
    LEVEL_COLORS,
    LEVEL_EMOJI,
    TRUNCATION_MARK,
    context_fields,
    describe_exception,
    format_bytes,
    format_duration,
    format_metrics,
    format_value,
    level_hex,
    plain_text,
    truncate,
    truncate_bytes,
    truncate_escaped,
)
from afs_callbacks.redaction import register_secret


@pytest.mark.parametrize("limit", [0, 5, 14, 15, 16, 40, 100])
def test_truncate_respects_the_limit_and_marks_the_cut(limit: int) -> None:
    text = "x" * 50
    cut = truncate(text, limit)
    assert len(cut) <= limit
    if limit >= 50:
        assert cut == text
    elif limit > len(TRUNCATION_MARK):
        assert cut.endswith(TRUNCATION_MARK)


@pytest.mark.parametrize("limit", [0, 3, 10, 17, 18, 19, 20, 30, 60])
def test_truncate_bytes_never_splits_a_character_or_exceeds_the_limit(limit: int) -> None:
    text = "é✓🚀" * 10  # 2-, 3- and 4-byte characters
    cut = truncate_bytes(text, limit)
    assert len(cut.encode("utf-8")) <= limit
    cut.encode("utf-8").decode("utf-8")  # still valid UTF-8
    if len(text.encode("utf-8")) > limit >= len(TRUNCATION_MARK.encode("utf-8")):
        assert cut.endswith(TRUNCATION_MARK)


def test_truncate_bytes_keeps_short_text() -> None:
    assert truncate_bytes("héllo", 6) == "héllo"


@pytest.mark.parametrize("limit", [5, 14, 20, 33, 100])
def test_truncate_escaped_cuts_before_escaping(limit: int) -> None:
    text = "<b>&" * 20
    cut = truncate_escaped(text, limit, html.escape)
    assert len(cut) <= limit
    # No entity cut in half: every '&' starts a whole entity.
    assert all(part.startswith(("amp;", "lt;", "gt;", "quot;", "#x27;")) for part in cut.split("&")[1:])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "unknown"),
        (math.nan, "unknown"),
        (math.inf, "unknown"),
        (0, "0.0s"),
        (4.24, "4.2s"),
        (61, "1m 01s"),
        (3723.4, "1h 02m 03s"),
        (90061, "1d 01h 01m"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (980 * 2**20, "980.0 MiB"),
        (12.3 * 2**30, "12.3 GiB"),
        (5 * 2**50, "5120.0 TiB"),  # the largest unit, however large
    ],
)
def test_format_bytes_uses_binary_units(value: float, text: str) -> None:
    assert format_bytes(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.nan, "NaN"),
        (math.inf, "Inf"),
        (-math.inf, "-Inf"),
        (0.0, "0"),
        (0.1234567, "0.1235"),
        (123456.0, "1.235e+05"),
        (0.00012, "1.200e-04"),
        (True, "True"),
        (3, "3"),
        ("adam", "adam"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_format_metrics_keeps_order() -> None:
    assert format_metrics({"loss": 0.1234567, "acc": 0.9, "lr": math.nan}) == "loss=0.1235, acc=0.9, lr=NaN"
    assert format_metrics({}) == ""


def event_with(**context: object) -> NotificationEvent:
    return NotificationEvent(EventType.TRAINING_COMPLETED, NotificationLevel.SUCCESS, "Done", "ok", context)


def test_context_fields_are_labelled_in_a_stable_order_and_skip_empty_ones() -> None:
    event = event_with(
        step=120, model="bert", run_id="r1", host="", duration=3723.4, cost=12.5, threshold=10, extra="x"
    )
    assert context_fields(event) == [
        ("Model", "bert"),
        ("Run", "r1"),
        ("Step", "120"),
        ("Duration", "1h 02m 03s"),
        ("Cost", "$12.50"),
        ("Threshold", "$10.00"),
    ]


def test_plain_text_has_title_message_fields_and_metrics() -> None:
    event = event_with(model="bert", metrics={"loss": 0.25})
    assert plain_text(event) == "SUCCESS: Done\nok\nModel: bert\nMetrics: loss=0.25"


def test_every_level_has_a_colour_and_an_emoji() -> None:
    for level in NotificationLevel:
        assert 0 <= LEVEL_COLORS[level] <= 0xFFFFFF
        assert LEVEL_EMOJI[level]
        assert len(level_hex(level)) == 7 and level_hex(level).startswith("#")


def test_describe_exception_keeps_type_and_tail_and_redacts() -> None:
    token = "tok" + uuid.uuid4().hex
    register_secret(token)

    def deep(n: int) -> None:
        if n == 0:
            raise RuntimeError(f"upload to https://hub.example.com/{token} failed")
        deep(n - 1)

    try:
        deep(30)
    except RuntimeError as error:
        text = describe_exception(error, tail_lines=6)
    assert len(text.splitlines()) == 6
    assert text.splitlines()[-1] == "RuntimeError: upload to https://hub.example.com/*** failed"
    assert token not in text
