"""PagerDuty's words and severity at a run's end, read from the end's outcome (never
decided here), and a failure's summary naming its error: manager -> outbox -> sender ->
PagerDutyNotifier -> the loopback Events API of tests/channels/test_pagerduty.py."""

from __future__ import annotations

from afs_callbacks import EventType, NotificationEvent
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver
from tests.channels.support import flushed
from tests.channels.test_pagerduty import api, channel, manager  # noqa: F401 (fixtures)


def end(kind: EventType, level: str, outcome: str) -> NotificationEvent:
    context = {"run_id": "r5", "model": "resnet", "outcome": outcome}
    return NotificationEvent(kind, level, f"{kind.value}: resnet", "the end", context=context)


def test_an_end_pages_at_its_outcomes_level_even_when_sent_lower(api: LoopbackReceiver) -> None:  # noqa: F811
    """A writer that sends a NaN stop at warning (an older tracker, a script): the outcome
    says error, so it pages as an error; a kill pages critically."""
    assert channel(api).send(end(EventType.TRAINING_COMPLETED, "warning", "stopped_on_problem")).ok
    assert channel(api).send(end(EventType.TRAINING_FAILED, "error", "killed")).ok
    stop, killed = [request.json() for request in api.wait_for(2)]
    assert stop["event_action"] == "trigger" and stop["payload"]["severity"] == "error"
    assert killed["event_action"] == "trigger" and killed["payload"]["severity"] == "critical"


def test_a_failures_summary_names_the_error_and_its_details_keep_the_traceback(
    manager: NotificationManager,  # noqa: F811
    api: LoopbackReceiver,  # noqa: F811
) -> None:
    """The summary is the line a phone's push shows: the error is in it, not only in the
    incident's details; the full traceback travels in ``custom_details``."""
    manager.register_handler("pagerduty", channel(api))

    def training_step() -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    try:
        training_step()
    except RuntimeError as error:
        manager.notify_training_failed("resnet", "r9", error)
    assert flushed(manager) == ["delivered"]
    (request,) = api.wait_for(1)
    payload = request.json()["payload"]
    assert payload["summary"].startswith("[r9] ")  # then the title (its outcome's icon, maybe)
    assert payload["summary"].endswith(
        "Training failed: resnet — RuntimeError: CUDA error: device-side assert triggered"
    )
    details = payload["custom_details"]
    assert details["message"].startswith("RuntimeError: CUDA error: device-side assert triggered\nat ")
    assert "in training_step" in details["message"].splitlines()[1]
    assert details["traceback"].startswith("Traceback (most recent call last):")
