"""What a card shows and how each rendering keeps to its service's limits and markup."""

from __future__ import annotations

import html.parser
import json
import re

import pytest

from afs_callbacks.channels.card_view import card_view, progress_bar, render_markdown, render_text
from afs_callbacks.channels.discord import card_embed
from afs_callbacks.channels.slack import card_message
from afs_callbacks.channels.telegram import card_html
from afs_callbacks.outcome import Outcome
from afs_callbacks.runstate import COMPLETED, FAILED, INTERRUPTED, KILLED, STALLED, RunState
from tests.cards.conftest import state

NOW = 1_764_600_060.0  # 14:41:00 UTC


def full() -> RunState:
    return state(
        step=400,
        total_steps=1000,
        epoch=4,
        eta_seconds=360,
        steps_per_second=12.5,
        samples_per_second=1600,
        metrics={"val_loss": 0.4321, "loss": 0.3, "acc": 0.91},
        best=0.4102,
        best_epoch=3,
        last_checkpoint="/ckpt/epoch=3.ckpt",
        peak_gpu_memory=12.3 * 2**30,
        cost=1.234,
    )


def test_a_running_card_shows_what_a_glance_needs() -> None:
    text = render_text(full())
    assert text.splitlines()[0] == "🏃 resnet18 · running"
    assert "████████░░░░░░░░░░░░ 40% · epoch 4/10 · step 400/1,000 · ETA 6m 00s" in text
    for line in (
        "Run: run-1",
        "Host: gpu-node-7",
        "Elapsed: 1m 00s",
        "Throughput: 12.5 steps/s · 1,600 samples/s",
        "val_loss: 0.4321 (best 0.4102 at epoch 3)",
        "Metrics: loss=0.3, acc=0.91",
        "Checkpoint: /ckpt/epoch=3.ckpt",
        "Peak GPU memory: 12.3 GiB",
        "Cost: $1.23",
    ):
        assert line in text.splitlines(), line
    assert text.endswith("updated 14:41:00 UTC")


@pytest.mark.parametrize(
    ("status", "changes", "expected"),
    [
        (
            COMPLETED,
            {
                "end_reason": "max_epochs",
                "summary": "Finished (max_epochs) after 10 of 10 epochs.\nBest val_loss: 0.41",
            },
            "Finished (max_epochs) after 10 of 10 epochs.",
        ),
        (COMPLETED, {"end_reason": "max_epochs"}, "Completed (max_epochs)"),
        (
            FAILED,
            {"error_type": "RuntimeError", "error": "Traceback\nRuntimeError: CUDA out of memory"},
            "Failed",
        ),
        (INTERRUPTED, {"end_reason": "KeyboardInterrupt"}, "Interrupted (KeyboardInterrupt)"),
        (KILLED, {}, "Killed"),
        (STALLED, {}, "Stalled"),
    ],
)
def test_the_end_shows_the_final_state(status: str, changes: dict[str, object], expected: str) -> None:
    ended = state(status=status, ended_at=NOW + 30, eta_seconds=99, **changes)
    view = card_view(ended)
    assert view.outcome is not None and view.outcome.startswith(expected)
    assert "ETA" not in (view.progress or "")
    if status == FAILED:
        assert "RuntimeError: CUDA out of memory" in view.outcome
        assert "RuntimeError: RuntimeError" not in view.outcome


def test_progress_bar() -> None:
    assert progress_bar(0) == "░" * 20 and progress_bar(1) == "█" * 20
    assert progress_bar(0.999) == "█" * 19 + "░"  # full only when done
    assert progress_bar(float("nan")) == "░" * 20


def test_a_run_of_unknown_length_has_no_bar() -> None:
    assert card_view(state(total_epochs=None, epoch=None)).progress is None
    assert card_view(state(total_epochs=None, epoch=3)).progress == "epoch 3"


NASTY = "<!channel> <@U1> *bold* <b>x</b> & [link](http://x) `code`"


def test_run_text_cannot_format_or_ping() -> None:
    hostile = state(model=NASTY, metrics={NASTY: 1.0})
    assert "&lt;!channel&gt;" in card_message(hostile)["text"]
    fields = [f["text"] for block in card_message(hostile)["blocks"] for f in block.get("fields", [])]
    assert all("<!channel>" not in text for text in fields)
    markdown = render_markdown(hostile)
    assert r"\*bold\*" in markdown and r"\[link\]" in markdown and r"\`code\`" in markdown
    parser = html.parser.HTMLParser()
    tags: list[str] = []
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)  # type: ignore[method-assign]
    parser.feed(card_html(hostile))
    assert set(tags) <= {"b", "code"}


def test_huge_runs_stay_within_every_limit() -> None:
    huge = state(
        model="m" * 5000,
        run_id="r" * 500,
        metrics={f"metric_{i}_{'x' * 200}": float(i) for i in range(100)},
        status=FAILED,
        error="E" * 20_000,
        summary="S" * 20_000,
        last_checkpoint="/" + "d/" * 2000 + "last.ckpt",
    )
    assert len(render_text(huge, limit=4000)) <= 4000
    assert len(card_html(huge, limit=4096)) <= 4096
    assert len(render_text(huge, limit=500)) <= 500
    message = card_message(huge)
    assert len(message["text"]) <= 3000 and len(message["blocks"]) <= 50
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    for block in message["blocks"]:
        assert len(block.get("text", {}).get("text", "")) <= 3000
        assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
        assert len(block.get("fields", [])) <= 10
    embed = card_embed(huge)
    total = len(embed["title"]) + len(embed.get("description", "")) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert len(embed["title"]) <= 256 and len(embed["fields"]) <= 25 and total <= 6000
    assert all(len(f["value"]) <= 1024 for f in embed["fields"])
    json.dumps(embed)


def test_secrets_in_run_text_are_redacted() -> None:
    from afs_callbacks.redaction import register_secret

    secret = "hunter2-card-secret-value"
    register_secret(secret)
    leaky = state(status=FAILED, error=f"ConnectionError: https://x/{secret}", last_checkpoint=f"/{secret}/c")
    assert secret not in render_text(leaky)


def _ended(outcome: Outcome) -> RunState:
    """A busy run's final state, as the tracker leaves it for ``outcome``."""
    facts: dict[str, object] = {
        "model": "resnet50-imagenet-finetune-v2",
        "host": "gpu-node-017.cluster.example.org",
        "step": 1_250,
        "total_steps": 12_500,
        "epoch": 1,
        "steps_per_second": 3.1,
        "samples_per_second": 397.0,
        "metrics": {"val_loss": 0.4321, **{f"train_metric_{i:02d}": 0.1 * i for i in range(12)}},
        "best": 0.4102,
        "best_epoch": 1,
        "last_checkpoint": "/scratch/alice/runs/resnet50-finetune-v2/checkpoints/epoch=0-step=1250.ckpt",
        "peak_gpu_memory": 61.2 * 2**30,
        "cost": 1.27,
        "ended_at": NOW,
        "end_reason": {
            Outcome.STOPPED_EARLY: "early_stopping (val_loss, patience 3, best 0.4102)",
            Outcome.STOPPED_ON_PROBLEM: "stop_on_nan",
            Outcome.INTERRUPTED: "KeyboardInterrupt (Ctrl-C)",
            Outcome.PREEMPTED: "SIGTERM (preemption or job cancellation)",
            Outcome.KILLED: "killed without a word",
        }.get(outcome, "max_epochs"),
    }
    first_line = {
        Outcome.COMPLETED: "Finished (max_epochs) after 10 of 10 epochs.",
        Outcome.COMPLETED_WITH_WARNINGS: "Finished (max_epochs) after 10 of 10 epochs, but loss became"
        " Inf at step 1,203 (epoch 1), seen at step 1,250.",
        Outcome.STOPPED_EARLY: "Stopped early by EarlyStopping on val_loss, patience 3 after 4 of 10 epochs.",
        Outcome.STOPPED_ON_PROBLEM: "Stopped at the first NaN/Inf (stop_on_nan), after 1 of 10 epochs:"
        " loss became Inf at step 1,203 (epoch 1), seen at step 1,250.",
    }.get(outcome)
    if first_line:
        facts["summary"] = (
            first_line + "\nBest val_loss: 0.4102 (epoch 1)\nThroughput: 3.1 steps/s, 397 samples/s"
        )
    if outcome in (Outcome.COMPLETED_WITH_WARNINGS, Outcome.STOPPED_ON_PROBLEM):
        facts["non_finite"] = "loss became Inf at step 1,203 (epoch 1), seen at step 1,250"
    if outcome is Outcome.FAILED:
        facts["error_type"] = "RuntimeError"
        facts["error"] = (
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)"
        )
    return state(run_id="resnet50-imagenet-finetune-v2-20251202-041200-7f3a9c", status=outcome.value, **facts)


@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda outcome: outcome.value)
def test_each_outcome_fits_every_service_whole(outcome: Outcome) -> None:
    """The card of every outcome shows its icon and words, and its key lines (the headline,
    the progress, how it ended, the elapsed time) whole within each service's limit."""
    ended = _ended(outcome)
    view = card_view(ended)
    assert view.headline == f"{outcome.icon} resnet50-imagenet-finetune-v2 · {outcome.label}"
    assert view.color == outcome.colour and view.outcome
    how = view.outcome.splitlines()[0]
    assert "Best val_loss" not in view.outcome  # the end message's summary, not the card's
    desktop_body = render_text(ended, limit=500).partition("\n")[2]  # the title is the headline
    renders = {
        "desktop": desktop_body,
        "ntfy": render_text(ended, limit=3000),
        "markdown": render_markdown(ended),
        "telegram": html.unescape(re.sub(r"</?(b|code)>", "", card_html(ended))),
        "slack": "\n".join(block.get("text", {}).get("text", "") for block in card_message(ended)["blocks"]),
        "discord": card_embed(ended)["title"] + "\n" + card_embed(ended)["description"],
    }
    for service, text in renders.items():
        assert "[truncated]" not in text, (service, text)
        plain = text.replace("\\", "")
        assert how.replace("\\", "") in plain, (service, text)
        assert (view.progress or "") in text, service
    for service in ("desktop", "ntfy", "telegram"):
        assert "Elapsed: " in renders[service], service
    assert len(desktop_body) <= 500


def test_a_live_run_that_saw_a_nan_says_so_on_its_card() -> None:
    live = state(non_finite="loss became Inf at step 3 (epoch 1), seen at step 8")
    view = card_view(live)
    assert view.headline.startswith("🏃") and view.outcome == (
        "First NaN/Inf: loss became Inf at step 3 (epoch 1), seen at step 8"
    )
