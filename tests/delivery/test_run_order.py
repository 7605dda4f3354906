"""A run's messages reach a paced channel in the order they happened (issue 21, item 3).

manager -> outbox -> sender -> SlackNotifier -> a loopback Slack incoming webhook that
answers the way Slack documents (``200 ok``; ``429`` with ``Retry-After``). The channel
keeps its real pacing (one message a second, Slack's published webhook rate): a run that
goes NaN and stops within that second must read started -> NaN -> stopped, whether the
messages arrive one by one or the end tells the ones still waiting as one story; nothing of
a run comes after its end, and retries do not reorder it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks.channels.slack import SlackNotifier
from afs_callbacks.config import Settings
from afs_callbacks.events import EventType
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, Reply

HOOK = "/services/T000/B000/XXXXorderSECRET0123"
STARTED, NAN, STOPPED = "Training started", "became NaN or Inf at step 5", "Training stopped after NaN/Inf"


@pytest.fixture
def slack() -> Iterator[LoopbackReceiver]:
    with LoopbackReceiver(Reply(200, body="ok")) as receiver:
        yield receiver


@pytest.fixture
def manager(tmp_path: Path, slack: LoopbackReceiver) -> Iterator[NotificationManager]:
    """A manager with a Slack webhook channel at its real pace (SlackNotifier.min_interval)."""
    channel = SlackNotifier(webhook_url=slack.url(HOOK))
    assert channel.min_interval >= 1.0  # the pacing under test
    settings = Settings(
        state_dir=tmp_path / "state", dedup_window=0, retry_base=0.05, retry_cap=0.1, console="never"
    )
    manager = NotificationManager({"slack": channel}, settings=settings)
    yield manager
    manager.close(timeout=0)


def messages(receiver: LoopbackReceiver, count: int = 1, refused: int = 0) -> list[tuple[str, str]]:
    """What the person reads, as (headline, the rest), in the order Slack took them; the
    first ``refused`` requests were answered with an error and are left out."""
    payloads = [json.loads(r.body) for r in receiver.wait_for(count + refused, timeout=20)[refused:]]
    return [
        (p["blocks"][0]["text"]["text"], json.dumps(p["blocks"][1:], ensure_ascii=False)) for p in payloads
    ]


def run_that_goes_nan_and_stops(manager: NotificationManager, run_id: str) -> None:
    """started, NaN at step 5, stopped: posted within a millisecond or so of each other."""
    manager.notify(f"{STARTED}: tiny-{run_id}", "Plan: 1 epoch", EventType.TRAINING_STARTED, run_id=run_id)
    manager.notify(
        f"NaN/Inf train_loss: tiny-{run_id}",
        f"train_loss {NAN} (epoch 0)",
        EventType.NAN_DETECTED,
        run_id=run_id,
    )
    manager.notify(
        f"{STOPPED}: tiny-{run_id}",
        "Stopped at step 5; duration 0.4 s",
        EventType.TRAINING_COMPLETED,
        run_id=run_id,
        outcome="stopped_on_problem",
    )


def story_of(sent: list[tuple[str, str]], run_id: str) -> list[str]:
    """Which of started / NaN / stopped the messages of ``run_id`` say, in reading order."""
    return said_in(sent, (STARTED, NAN, STOPPED), f"tiny-{run_id}")


def said_in(sent: list[tuple[str, str]], markers: tuple[str, ...], run: str = "") -> list[str]:
    """Which ``markers`` the messages (of ``run``: named in the headline) say, in reading
    order: a message's own headline last when its body tells earlier ones (the end's story)."""
    said: list[str] = []
    for headline, rest in sent:
        if run not in headline:
            continue
        told = sorted((rest.find(m), m) for m in markers if m in rest)
        said.extend(marker for _, marker in told)
        said.extend(m for m in markers if m in headline and m not in said)
    return said


def settled(manager: NotificationManager) -> bool:
    states = [d.state for entry in manager.outbox.history() for d in entry.deliveries]
    return bool(states) and all(state in ("delivered", "folded", "superseded") for state in states)


def wait_settled(manager: NotificationManager) -> None:
    report = manager.flush(30)
    assert report is not None and settled(manager), manager.outbox.counts()


def test_a_run_that_goes_nan_and_stops_reads_in_order(
    manager: NotificationManager, slack: LoopbackReceiver
) -> None:
    run_that_goes_nan_and_stops(manager, "r1")
    wait_settled(manager)
    sent = messages(slack)
    assert story_of(sent, "r1") == [STARTED, NAN, STOPPED]
    # Whatever waited when the end was claimed went out with it: never after it.
    assert STOPPED in sent[-1][0]
    folded = [e for e in manager.outbox.history(run_id="r1") if e.deliveries[0].state == "folded"]
    assert len(sent) + len(folded) == 3


def test_two_runs_each_read_in_order(manager: NotificationManager, slack: LoopbackReceiver) -> None:
    """Priority serves a run whose end waits first, but never before its own start."""
    manager.notify("Epoch 1 done: tiny-r2", "loss 0.5", EventType.EPOCH_COMPLETED, run_id="r2")
    run_that_goes_nan_and_stops(manager, "r3")
    manager.notify(f"{STARTED}: tiny-r4", "Plan: 1 epoch", EventType.TRAINING_STARTED, run_id="r4")
    manager.notify(f"{STOPPED}: tiny-r4", "Stopped", EventType.TRAINING_COMPLETED, run_id="r4")
    wait_settled(manager)
    sent = messages(slack, 2)
    assert story_of(sent, "r3") == [STARTED, NAN, STOPPED]
    assert story_of(sent, "r4") == [STARTED, STOPPED]


def test_a_retried_start_holds_the_rest_of_its_run(
    manager: NotificationManager, slack: LoopbackReceiver
) -> None:
    """Slack answers the first post 429 with Retry-After: the NaN and the end do not overtake
    the start while it waits; the run still reads started -> NaN -> stopped."""
    slack.reply(Reply(429, headers={"Retry-After": "1"}, body="rate_limited"))
    manager.notify(f"{STARTED}: tiny-r5", "Plan: 1 epoch", EventType.TRAINING_STARTED, run_id="r5")
    slack.wait_for(1, timeout=10)  # the start was tried (and refused) before the rest came
    manager.notify("NaN/Inf train_loss: tiny-r5", f"train_loss {NAN}", EventType.NAN_DETECTED, run_id="r5")
    manager.notify(f"{STOPPED}: tiny-r5", "Stopped", EventType.TRAINING_COMPLETED, run_id="r5")
    wait_settled(manager)
    sent = messages(slack, refused=1)
    assert story_of(sent, "r5") == [STARTED, NAN, STOPPED]
    assert STOPPED in sent[-1][0]


def test_a_real_loop_that_goes_nan_and_stops_reads_in_order(
    manager: NotificationManager, slack: LoopbackReceiver
) -> None:
    """A real (tiny) PyTorch loop under RunNotifier with ``stop_on_nan``: its loss turns NaN
    at step 3 and the loop stops, all well within the channel's one-second pace."""
    torch = pytest.importorskip("torch")
    from afs_callbacks.integrations.loop import RunNotifier

    model = torch.nn.Linear(1, 1)
    x = torch.rand(16, 1)
    quiet = {"monitors": False, "stall_timeout": None, "chart": False}
    with RunNotifier(manager, model_name="tiny", stop_on_nan=True, nan_check_every=1, **quiet) as run:
        for step in range(1, 20):
            loss = torch.nn.functional.mse_loss(model(x), 2 * x) * (float("nan") if step >= 3 else 1.0)
            if run.step(loss=loss.detach()):
                break
    wait_settled(manager)
    history = {entry.event.event_type: entry.event for entry in manager.outbox.history()}
    markers = tuple(
        history[kind].title
        for kind in (EventType.TRAINING_STARTED, EventType.NAN_DETECTED, EventType.TRAINING_COMPLETED)
    )
    sent = messages(slack)
    assert said_in(sent, markers) == list(markers)
    assert markers[2] in sent[-1][0]  # nothing after the end
