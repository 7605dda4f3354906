"""Shared text helpers: cutting to service limits, durations, metrics, fields, colours."""

from __future__ import annotations

import html
import json
import math
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.config import Settings
from afs_callbacks.formatting import (
    LEVEL_COLORS,
    LEVEL_EMOJI,
    TRUNCATION_MARK,
    context_fields,
    describe_exception,
    error_line_of,
    exception_report,
    format_bytes,
    format_duration,
    format_metrics,
    format_value,
    lead_with_error,
    level_hex,
    plain_text,
    shorten,
    truncate,
    truncate_bytes,
    truncate_escaped,
    utf8_length,
)
from afs_callbacks.manager import NotificationManager
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


def raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as error:
        return error
    raise AssertionError("did not raise")


def test_a_failure_leads_with_the_error_then_where_and_redacts() -> None:
    token = "tok" + uuid.uuid4().hex
    register_secret(token)

    def upload() -> None:
        raise RuntimeError(f"upload to https://hub.example.com/{token} failed")

    report = exception_report(raised(upload))
    text = report.text(step=120, epoch=2)
    first, where = text.splitlines()[:2]
    assert first == "RuntimeError: upload to https://hub.example.com/*** failed" == report.headline
    assert re.fullmatch(r"at tests/test_formatting\.py:\d+ in upload \(epoch 2, step 120\)", where)
    assert token not in text and token not in report.traceback
    assert describe_exception(raised(upload)).splitlines()[1].startswith("at tests/test_formatting.py:")


def test_library_frames_fold_into_one_line_and_no_carets() -> None:
    error = raised(lambda: json.loads("{not json"))  # raised inside the standard library
    report = exception_report(error)
    assert report.headline.startswith("JSONDecodeError: Expecting property name")
    assert report.where.startswith("tests/test_formatting.py:") and "in <lambda>" in report.where
    assert re.fullmatch(r"  … \d+ frames in python", report.frames[0]), report.frames
    assert "^" not in report.text()
    # The full traceback is Python's own, carets and library frames included.
    assert report.traceback.startswith("Traceback (most recent call last):")
    assert "json/decoder.py" in report.traceback


def test_a_recursion_is_told_once_and_chained_errors_are_named() -> None:
    def again(n: int) -> None:
        if n == 0:
            raise KeyError("epoch")
        again(n - 1)

    def load() -> None:
        try:
            again(50)
        except KeyError as error:
            raise ValueError("bad config") from error

    report = exception_report(raised(load))
    assert report.headline == "ValueError: bad config"
    assert report.causes[0].startswith("caused by KeyError: 'epoch' at tests/test_formatting.py:")
    lines = exception_report(raised(lambda: again(50))).frames
    assert sum("in again" in line for line in lines) == 2  # the raise, then the one repeated frame
    assert "  [the frame above repeated 49 more times]" in lines


def test_a_keras_wrapped_message_leads_with_the_layers_own_error() -> None:
    error = RuntimeError(
        "Exception encountered when calling Dense.call().\n\n\x1b[1mshapes (8, 3) and (4, 1) differ\x1b[0m"
        "\n\nArguments received by Dense.call():\n  • inputs=torch.Tensor(shape=torch.Size([8, 3]))"
    )
    report = exception_report(error)
    assert report.headline == "RuntimeError: shapes (8, 3) and (4, 1) differ"
    assert report.details[0] == "Exception encountered when calling Dense.call()."
    assert "\x1b" not in report.text()


FAILURE = (
    "RuntimeError: CUDA error\nat train.py:42 in training_step (epoch 2, step 120)\n\n"
    "Traceback, most recent call first:\n"
    + "".join(f"  train.py:{n} in f{n}\n      call_{n}()\n" for n in range(40))
    + "  … 6 frames in lightning"
)


def test_shorten_keeps_the_lead_and_cuts_the_middle_of_the_frames_whole() -> None:
    short = shorten(FAILURE, 400)
    assert len(short) <= 400
    assert short.startswith(
        "RuntimeError: CUDA error\nat train.py:42 in training_step (epoch 2, step 120)\n\n"
    )
    assert short.endswith("  … 6 frames in lightning")
    cut = re.search(r"\n  … (\d+) lines cut …\n", short)
    assert cut is not None
    kept = short.split("\n\n", 1)[1].splitlines()
    assert len(kept) - 1 + int(cut.group(1)) == len(FAILURE.split("\n\n", 1)[1].splitlines())
    # A frame keeps its source line: no source line is kept without the frame above it.
    for index, line in enumerate(kept):
        if line.startswith("      call_"):
            assert kept[index - 1].startswith("  train.py:")


def test_shorten_measures_after_escaping_and_in_bytes() -> None:
    text = "RuntimeError: a < b & c\nat x.py:1 in f\n\n" + "\n".join(f"  frame <{n}>" for n in range(200))
    escaped = shorten(text, 300, escape=html.escape)
    assert len(escaped) <= 300 and escaped.startswith("RuntimeError: a &lt; b &amp; c\n")
    wide = "RuntimeError: 显存不足\nat x.py:1 in f\n\n" + "\n".join(f"  帧 {n}" for n in range(200))
    in_bytes = shorten(wide, 300, measure=utf8_length)
    assert utf8_length(in_bytes) <= 300 and in_bytes.startswith("RuntimeError: 显存不足\n")
    # A lead longer than the limit is itself cut, at its end.
    assert shorten("E: " + "x" * 500 + "\n\nrest", 50) == truncate("E: " + "x" * 500, 50)
    # Text within the limit is left as it is (escaped).
    assert shorten("a < b", 10, escape=html.escape) == "a &lt; b"


LOG_TAIL = """epoch 3: 40%|████      | 12/30
Traceback (most recent call last):
  File "train.py", line 12, in <module>
    main()
ValueError: bad shape

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 14, in <module>
    raise RuntimeError("CUDA error: out of range")
RuntimeError: CUDA error: out of range
wandb: Waiting for W&B process to finish... (failed 1)."""


def test_a_text_traceback_gives_its_last_exception_line_not_a_log_line_after_it() -> None:
    assert error_line_of(LOG_TAIL) == "RuntimeError: CUDA error: out of range"
    assert error_line_of("no traceback\nbut a last line\n\n") == "but a last line"
    assert error_line_of("  \n") == ""
    led = lead_with_error(LOG_TAIL)
    assert led.startswith("RuntimeError: CUDA error: out of range\n\nepoch 3")
    assert lead_with_error("Disk full on /scratch") == "Disk full on /scratch"


def test_a_pasted_traceback_leads_the_failure_message(tmp_path: Path) -> None:
    """``afs-notify error --error "$(tail log)"``: the message and the summary lead with the error."""
    with NotificationManager(settings=Settings(state_dir=tmp_path, console="never")) as manager:
        event = manager.notify_training_failed("resnet", "r1", LOG_TAIL)
    assert event is not None
    assert event.message.splitlines()[0] == "RuntimeError: CUDA error: out of range"
    assert event.context["error"] == "RuntimeError: CUDA error: out of range"
