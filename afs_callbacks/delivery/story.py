"""A run's story: the end of a run told together with its earlier messages that had not
gone out yet, as one message.

A run that goes NaN and stops within a second, on a channel that sends one message a
second, would otherwise reach the person as three pushes that arrive after the fact; in
the order of urgency they would even read backwards ("stopped", then "NaN", then
"started"). The sender claims a run's messages in the order they happened
(:mod:`afs_callbacks.delivery.priority`), and when it claims a run's end while earlier
messages of that run still wait on the same channel, the outbox folds them into the end
(:meth:`~afs_callbacks.delivery.outbox.Outbox.claim`, each kept in the history as
``folded``) and :func:`tell` makes the one message that is sent:

* the end's title, type, id (the idempotency key), key and attachments (the chart);
* the body: each earlier message's title and first line, in order, with how long after the first it
  came, then how the run ended (its ``outcome``) and when, then the end's own body (the
  summary);
* the most serious level of all of them, so a folded NaN alert is still pushed as an
  error, and a channel that asked for errors only got the NaN's delivery in the first
  place (routing is per message, before any folding);
* the start's context under the end's (plan, devices, SLURM job), and every folded
  message, whole, in ``context["story"]`` for machine readers (webhooks).

The rule is written down for users in docs/delivery.md ("How the limits compose").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from afs_callbacks import messages
from afs_callbacks.events import EventType, NotificationEvent
from afs_callbacks.outcome import Outcome

#: What an end stored before outcomes existed says, by its type (the shared contract).
_OUTCOME_OF_TYPE = {
    EventType.TRAINING_COMPLETED: Outcome.COMPLETED,
    EventType.TRAINING_FAILED: Outcome.FAILED,
    EventType.OUT_OF_MEMORY: Outcome.FAILED,
    EventType.TRAINING_INTERRUPTED: Outcome.INTERRUPTED,
}
_STARTS = frozenset({EventType.TRAINING_STARTED, EventType.TRAINING_RESUMED})


def outcome_of(end: NotificationEvent) -> Outcome | None:
    """How the run of ``end`` ended: its ``context["outcome"]``, else what its type says."""
    value = end.context.get("outcome")
    if value:
        try:
            return Outcome.parse(str(value))
        except ValueError:
            pass
    return _OUTCOME_OF_TYPE.get(end.event_type)


def tell(end: NotificationEvent, told: Sequence[NotificationEvent]) -> NotificationEvent:
    """The one message that tells ``end`` with the earlier messages ``told`` (oldest first)."""
    if not told:
        return end
    first = told[0].timestamp
    lines = [
        messages.StoryLine(max(0.0, (event.timestamp - first).total_seconds()), _line(event))
        for event in told
    ]
    outcome = outcome_of(end)
    ending = outcome.label if outcome is not None else end.event_type.value.replace("_", " ")
    text = messages.run_story(
        messages.Message(end.title, end.message),
        lines,
        ending,
        max(0.0, (end.timestamp - first).total_seconds()),
        end.run_id or "",
    )
    levels = [end.level, *(event.level for event in told)]
    if outcome is not None:
        levels.append(outcome.level)
    start = next((event for event in told if event.event_type in _STARTS), None)
    context: dict[str, Any] = {**(start.context if start is not None else {}), **end.context}
    context["story"] = [_entry(event) for event in told]
    return end.with_changes(message=text.body, level=max(levels), context=context)


def _line(event: NotificationEvent) -> str:
    """What one earlier message says in a line: its title (what happened), then its body's
    first line (the detail: "train_loss became NaN at step 5")."""
    title, body = event.title.strip(), event.message.strip()
    first = body.splitlines()[0] if body else ""
    return f"{title} — {first}" if title and first else title or first


def _entry(event: NotificationEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_type": event.event_type.value,
        "level": event.level.value,
        "title": event.title,
        "message": event.message,
        "timestamp": event.timestamp.isoformat(),
    }


__all__ = ["outcome_of", "tell"]
