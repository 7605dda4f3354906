"""The CLI's pure parts: metric parsing, the stderr tail, tables, names and result texts."""

from __future__ import annotations

import io
import time

import pytest

from afs_callbacks.cli._common import UsageError, delivery_result, parse_metrics, relative
from afs_callbacks.cli._output import Output, render_table
from afs_callbacks.cli._run import MAX_LINE, StderrTail, display, guess_model
from afs_callbacks.delivery.outbox import Delivery
from afs_callbacks.redaction import register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy=0.95,f1=0.92", {"accuracy": 0.95, "f1": 0.92}),
        (" loss = 1e-3 , ", {"loss": 0.001}),
        ("loss=nan", {"loss": pytest.approx(float("nan"), nan_ok=True)}),
        ("", {}),
    ],
)
def test_parse_metrics(text: str, expected: dict[str, float]) -> None:
    assert parse_metrics(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy", "'accuracy' is not NAME=NUMBER"),
        ("=0.5", "'=0.5' is not NAME=NUMBER"),
        ("acc=", "'acc=' is not NAME=NUMBER"),
        ("acc=high", "must be a number, got 'high'"),
        ("acc=1,acc=2", "'acc' is given twice"),
    ],
)
def test_parse_metrics_rejects_with_one_sentence(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_metrics(text)


def feed_all(tail: StderrTail, *chunks: bytes) -> str:
    for chunk in chunks:
        tail.feed(chunk)
    return tail.text()


def test_tail_keeps_the_last_lines_across_chunk_boundaries() -> None:
    tail = StderrTail(lines=2)
    assert feed_all(tail, b"one\ntw", b"o\nthr", b"ee\n") == "two\nthree"


def test_tail_shows_a_progress_bar_as_a_screen_would() -> None:
    bar = b"".join(b"\r %d%%|" % pct for pct in range(0, 101, 5))
    text = feed_all(StderrTail(lines=3), b"start\n", bar, b"\n", b"Traceback: boom\n")
    assert text == "start\n 100%|\nTraceback: boom"


def test_tail_handles_crlf_split_between_chunks_and_colour_codes() -> None:
    text = feed_all(StderrTail(), b"\x1b[31mred error\x1b[0m\r", b"\nnext\r\n")
    assert text == "red error\nnext"


def test_tail_includes_an_unfinished_last_line_and_stays_bounded() -> None:
    tail = StderrTail(lines=5)
    tail.feed(b"x" * (10 * MAX_LINE))
    tail.feed(b"y" * 10)
    text = tail.text()
    assert text.endswith("y" * 10) and len(text) == MAX_LINE


def test_render_table_aligns_and_paints_after_padding() -> None:
    lines = render_table(["A", "STATE", "DETAIL"], [["webhook", "delivered", "ok"], ["x", "dead", "boom"]])
    assert lines == ["A        STATE      DETAIL", "webhook  delivered  ok", "x        dead       boom"]
    painted = render_table(
        None, [["x", "dead", "boom"]], paint=lambda cell: f"<{cell}>" if cell == "dead" else cell
    )
    assert painted == ["x  <dead>  boom"]


def test_output_redacts_every_line_and_colours_only_terminals() -> None:
    register_secret("hunter2-secret-value")
    stream = io.StringIO()
    output = Output(stdout=stream, stderr=stream)
    output.line("password is hunter2-secret-value")
    output.table(["STATE"], [["dead"]])
    assert "hunter2" not in stream.getvalue() and "***" in stream.getvalue()
    assert "\x1b[" not in stream.getvalue()


@pytest.mark.parametrize(
    ("command", "model"),
    [
        (["python", "train.py", "--epochs", "3"], "train"),
        (["torchrun", "--nproc_per_node=2", "scripts/finetune_bert.py"], "finetune_bert"),
        (["python", "-m", "mypkg.train"], "mypkg.train"),
        (["/opt/bin/trainer", "--fast"], "trainer"),
    ],
)
def test_guess_model(command: list[str], model: str) -> None:
    assert guess_model(command) == model


def test_display_is_one_line_and_masks_secrets() -> None:
    shown = display(["python", "-c", "a = 1\nb = 2", "https://hooks.slack.com/services/T/B/XyZsecret"])
    assert "\n" not in shown and '"a = 1 ⏎ b = 2"' in shown
    assert "XyZsecret" not in shown


def test_delivery_result_texts() -> None:
    now = time.time()
    delivered = Delivery("slack", "delivered", 1, None, None, now)
    dead = Delivery("slack", "dead", 3, None, "HTTP 404: no_service", None)
    pending = Delivery("slack", "pending", 1, now + 30, "HTTP 503", None)
    fresh = Delivery("slack", "pending", 0, now, None, None)
    assert delivery_result(delivered, now=now)[0] == "delivered"
    assert delivery_result(dead, now=now) == ("failed", "HTTP 404: no_service (after 3 attempts)")
    assert delivery_result(pending, now=now) == ("pending", "HTTP 503; next attempt in 30 s")
    assert delivery_result(fresh, now=now)[1].startswith("not attempted yet")
    assert relative(0.5) == "now" and relative(600) == "in 10 min"
