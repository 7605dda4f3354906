"""Each way a run ends, through a real tiny Lightning training on CPU, read back from every
surface this project owns: the end message (a real webhook channel to a loopback
receiver), PagerDuty's resolution (the real channel to the same receiver, under its Events
API path), the run's state in the store, the live card (a real Telegram channel on the
loopback Bot API, tests/cards/services.py), the dashboard's JSON and ``afs-notify history
--json``. Every one of them must say the same outcome, the one the tracker decided.

The ways: the planned end, EarlyStopping, ``stop_on_nan``, a NaN/Inf survived (the train
loss first, and a val_loss alone at an epoch's end), a crash, Ctrl-C (KeyboardInterrupt)
and SIGTERM (Lightning's own handler, as a scheduler's preemption sends it).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import EarlyStopping  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402

from afs_callbacks import EventType, NotificationEvent, NotificationManager, Settings  # noqa: E402
from afs_callbacks.channels.pagerduty import INCIDENT_TYPES, PagerDutyNotifier, dedup_key  # noqa: E402
from afs_callbacks.channels.telegram import TelegramNotifier  # noqa: E402
from afs_callbacks.channels.webhook import WebhookNotifier  # noqa: E402
from afs_callbacks.cli import main as afs_notify  # noqa: E402
from afs_callbacks.dashboard.api import RunFilter, runs_payload  # noqa: E402
from afs_callbacks.delivery.outbox import Outbox  # noqa: E402
from afs_callbacks.events import NotificationLevel  # noqa: E402
from afs_callbacks.formatting import TRUNCATION_MARK, format_duration  # noqa: E402
from afs_callbacks.integrations.lightning import AFSNotify  # noqa: E402
from afs_callbacks.outcome import Outcome  # noqa: E402
from afs_callbacks.testing import LoopbackReceiver  # noqa: E402
from tests.cards.conftest import CHAT, TELEGRAM_TOKEN  # noqa: E402
from tests.cards.services import FakeTelegram  # noqa: E402

pytestmark = pytest.mark.slow
END_TYPES = (EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED, EventType.TRAINING_INTERRUPTED)
PAGERDUTY_KEY = "R0UTINGkey1234567890abcdefABCDEF"


class Scripted(BoringModel):
    """BoringModel whose run goes wrong the way a case says (steps are 1-based: the step
    a batch makes is ``global_step + 1``)."""

    def __init__(self, **script: Any) -> None:
        super().__init__()
        self.script = script

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        step, script = self.global_step + 1, self.script
        if script.get("raise_at") == step:
            raise script["error"]()
        if script.get("sigterm_at") == step:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: it stops at the step's end
        loss = self.step(batch)
        if script.get("inf_from") is not None and step >= script["inf_from"]:
            loss = loss * math.inf  # a diverging run: the parameters go NaN after it
        self.log("train_loss", loss, on_step=True, on_epoch=True)  # train_loss{,_step,_epoch}
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        if self.script.get("constant_val"):
            loss = torch.tensor(1.0)  # never improves: EarlyStopping stops the run
        if self.script.get("val_nan_epoch") == self.current_epoch + 1:
            loss = loss * math.nan
        self.log("val_loss", loss)
        return {"x": loss}


@dataclass(frozen=True)
class Case:
    """A way to end: the script, what fit raises, and what every surface must say."""

    outcome: Outcome
    title: str
    script: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)
    raises: type[BaseException] | None = None
    nan: str | None = None  # the NaN message's first sentence


CASES = {
    "planned_end": Case(Outcome.COMPLETED, "✅ Training completed: tiny", trainer={"max_epochs": 1}),
    "early_stopping": Case(
        Outcome.STOPPED_EARLY,
        "⏹️ Training stopped early (EarlyStopping on val_loss, patience 1): tiny",
        script={"constant_val": True},
        trainer={"max_epochs": 6, "callbacks": lambda: [EarlyStopping("val_loss", patience=1)]},
    ),
    "stop_on_nan": Case(
        Outcome.STOPPED_ON_PROBLEM,
        "🛑 Training stopped on a problem (Inf loss at step 3): tiny",
        script={"inf_from": 3},
        trainer={"log_every_n_steps": 4, "limit_train_batches": 8},
        notify={"stop_on_nan": True},
        nan="loss became Inf at step 3 (epoch 1), seen at step 4.",
    ),
    # The window of train losses is not read before the epoch's end (every 50 steps), where
    # val_loss is NaN too: the message must still name the train loss and its step.
    "nan_survived": Case(
        Outcome.COMPLETED_WITH_WARNINGS,
        "⚠️ Training completed with warnings (Inf loss at step 3): tiny",
        script={"inf_from": 3},
        nan="loss became Inf at step 3 (epoch 1), seen at step 4.",
    ),
    "val_loss_nan": Case(
        Outcome.COMPLETED_WITH_WARNINGS,
        "⚠️ Training completed with warnings (NaN val_loss at epoch 2): tiny",
        script={"val_nan_epoch": 2},
        nan="val_loss became NaN at the end of epoch 2 (step 8).",
    ),
    "crash": Case(
        Outcome.FAILED,
        "❌ Training failed: tiny",
        script={"raise_at": 3, "error": lambda: RuntimeError("boom")},
        raises=RuntimeError,
    ),
    "ctrl_c": Case(
        Outcome.INTERRUPTED,
        "⏸️ Training interrupted (Ctrl-C): tiny",
        script={"raise_at": 3, "error": KeyboardInterrupt},
        raises=SystemExit,  # Lightning reports it, then exits with 1
    ),
    "sigterm": Case(
        Outcome.PREEMPTED,
        "⏸️ Training preempted (SIGTERM): tiny",
        script={"sigterm_at": 3},
        raises=SystemExit,  # Lightning's SIGTERMException
    ),
}


@pytest.fixture
def bot_api() -> Iterator[FakeTelegram]:
    service = FakeTelegram(TELEGRAM_TOKEN)
    yield service
    service.close()


@pytest.fixture
def signals_restored() -> Iterator[None]:
    """Lightning ignores SIGINT after a KeyboardInterrupt; SIGTERM gets its handler back."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def train(case: Case, tmp_path: Path, receiver: LoopbackReceiver, bot_api: FakeTelegram) -> str:
    """Run the case's training with a webhook, PagerDuty (on the same receiver, under
    ``/v2/enqueue``) and a Telegram card; return the run id."""
    channels = {
        "webhook": WebhookNotifier(receiver.url("/hook")),
        "pagerduty": PagerDutyNotifier(PAGERDUTY_KEY, api_url=receiver.url("/v2/enqueue")),
        "telegram": TelegramNotifier(TELEGRAM_TOKEN, CHAT, api_url=bot_api.url("")),
    }
    settings = Settings(state_dir=Path(os.environ["AFS_STATE_DIR"]), card_interval=0.2, console="never")
    options = dict(case.trainer)
    extra = options.pop("callbacks", lambda: [])()
    options = {
        "max_epochs": 2,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
        **options,
    }
    with NotificationManager(channels, settings=settings) as manager:
        notify = AFSNotify(manager, model_name="tiny", chart=False, monitors=False, **case.notify)
        trainer = pl.Trainer(callbacks=[notify, *extra], **options)
        if case.raises is None:
            trainer.fit(Scripted(**case.script))
        else:
            with pytest.raises(case.raises):
                trainer.fit(Scripted(**case.script))
        report = manager.flush(20)
        assert report.pending == 0 and report.dead == 0, report
        run_id = notify.tracker.run_id
        manager.close(timeout=20)  # the cards' final edits
    return run_id


@pytest.fixture
def telegram_unpaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramNotifier, "min_interval", 0.0)


def card_text(bot_api: FakeTelegram) -> str:
    """The one silent message (the card), as plain text."""
    cards = [message for message in bot_api.messages.values() if message["silent"]]
    assert len(cards) == 1, [message["text"][:60] for message in bot_api.messages.values()]
    return html.unescape(re.sub(r"<[^>]+>", "", cards[0]["text"]))


@pytest.mark.parametrize("name", list(CASES))
def test_every_surface_tells_the_same_outcome(
    name: str,
    tmp_path: Path,
    receiver: LoopbackReceiver,
    bot_api: FakeTelegram,
    telegram_unpaced: None,
    signals_restored: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    outcome = case.outcome
    run_id = train(case, tmp_path, receiver, bot_api)
    events = sorted(
        (
            NotificationEvent.from_dict(request.json())
            for request in receiver.requests
            if request.path == "/hook"
        ),
        key=lambda event: event.timestamp,
    )

    # The end message: titled, levelled and labelled by the outcome; only one end.
    [end] = [event for event in events if event.event_type in END_TYPES]
    assert (end.title, end.context["outcome"]) == (case.title, outcome.value)
    assert end.level is outcome.level
    assert end.run_id == run_id

    # The first NaN/Inf: named once, at the step where it happened, with where it was seen.
    nans = [event for event in events if event.event_type is EventType.NAN_DETECTED]
    if case.nan is None:
        assert not nans and "non_finite" not in end.context
    else:
        assert len(nans) == 1 and nans[0].message.startswith(case.nan), nans[0].message
        assert end.context["non_finite"] == case.nan.rstrip(".")

    # PagerDuty: only an end that resolves alerts closes the run's incidents; a NaN stop
    # keeps the NaN's incident open and pages its own end (error level).
    pages = [request.json() for request in receiver.requests if request.path == "/v2/enqueue"]
    resolved = {page["dedup_key"] for page in pages if page["event_action"] == "resolve"}
    triggered = [page["dedup_key"] for page in pages if page["event_action"] == "trigger"]
    if outcome.resolves_alerts:
        assert resolved >= {dedup_key(run_id, kind) for kind in INCIDENT_TYPES}, pages
    else:
        assert not resolved, pages
    if end.event_type is EventType.TRAINING_COMPLETED:
        paged_end = dedup_key(run_id, EventType.TRAINING_COMPLETED) in triggered
        assert paged_end is (end.level >= NotificationLevel.ERROR), pages
    if case.nan is not None:
        assert dedup_key(run_id, EventType.NAN_DETECTED) in triggered

    # The run's state in the store, and the dashboard's view of it.
    with Outbox(Path(os.environ["AFS_STATE_DIR"]) / "outbox.sqlite3") as outbox:
        stored = outbox.run(run_id)
        assert stored is not None and stored.status == outcome.value and stored.final
        listed = runs_payload(outbox, RunFilter(status=outcome.value))
    [row] = [row for row in listed["runs"] if row["run_id"] == run_id]
    info = {item["status"]: item for item in listed["status_info"]}[outcome.value]
    assert (info["label"], info["icon"], info["colour"]) == (
        outcome.label,
        outcome.icon,
        f"#{outcome.colour:06x}",
    )
    assert bool(row["non_finite"]) is (case.nan is not None)

    # The live card: the outcome's icon and words, one line of how it ended, nothing cut.
    card = card_text(bot_api)
    assert card.splitlines()[0] == f"{outcome.icon} tiny · {outcome.label}", card
    assert TRUNCATION_MARK not in card
    if case.nan is not None:
        assert case.nan.rstrip(".") in card

    # afs-notify history --json: the end says its outcome.
    capsys.readouterr()
    assert afs_notify(["history", "--json", "--run", run_id]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [entry["outcome"] for entry in printed if "outcome" in entry] == [outcome.value]


def test_a_clean_run_says_each_thing_once(
    tmp_path: Path, receiver: LoopbackReceiver, bot_api: FakeTelegram, telegram_unpaced: None
) -> None:
    """One value per metric, one duration, singular and plural right, and the card's
    numbers the end message's."""
    run_id = train(CASES["planned_end"], tmp_path, receiver, bot_api)
    events = [
        NotificationEvent.from_dict(request.json())
        for request in receiver.requests
        if request.path == "/hook"
    ]
    [end] = [event for event in events if event.event_type is EventType.TRAINING_COMPLETED]
    assert end.run_id == run_id
    # train_loss logged on_step and on_epoch is one metric, with the epoch's value.
    assert set(end.metrics) == {"train_loss", "val_loss"}
    assert not re.search(r"_(step|epoch)=", end.message)
    # The duration is a field; the text does not say it again.
    assert format_duration(end.context["duration"]) not in end.message
    assert end.message.splitlines()[0] == "Finished (max_epochs) after 1 of 1 epoch."
    [started] = [event for event in events if event.event_type is EventType.TRAINING_STARTED]
    assert "(1 epoch, " in started.message
    # The card's elapsed time and throughput are the end message's own figures.
    card = card_text(bot_api)
    assert f"Elapsed: {format_duration(end.context['duration'])}" in card.splitlines()
    throughput = re.search(r"Throughput: ([\d.,]+) steps/s", end.message)
    assert throughput is not None and f"Throughput: {throughput.group(1)} steps/s" in card
    assert "train_loss_step" not in card and "train_loss_epoch" not in card
    assert end.level is NotificationLevel.SUCCESS
