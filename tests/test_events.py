"""Events: the seed names, level order, parsing, and the JSON round trip the outbox relies on."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from afs_callbacks import Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.events import DEFAULT_LEVELS

SEED_EVENT_TYPES = [
    "TRAINING_STARTED",
    "TRAINING_COMPLETED",
    "TRAINING_FAILED",
    "TRAINING_PAUSED",
    "TRAINING_RESUMED",
    "EVALUATION_STARTED",
    "EVALUATION_COMPLETED",
    "EVALUATION_FAILED",
    "CHECKPOINT_SAVED",
    "CHECKPOINT_LOADING",
    "EPOCH_COMPLETED",
    "BATCH_PROCESSED",
    "LOSS_IMPROVED",
    "LOSS_DEGRADED",
    "COST_THRESHOLD",
    "GPU_MEMORY",
    "GPU_UTILIZATION",
    "DISK_SPACE",
    "ERROR_OCCURRED",
    "OUT_OF_MEMORY",
    "NAN_DETECTED",
]


def make_event(**changes: object) -> NotificationEvent:
    fields: dict[str, object] = {
        "event_type": EventType.NAN_DETECTED,
        "level": NotificationLevel.ERROR,
        "title": "NaN loss",
        "message": "loss became NaN at step 120",
        "context": {"model": "bert-tiny", "run_id": "r1", "step": 120, "metrics": {"loss": 0.5}},
    }
    fields.update(changes)
    return NotificationEvent(**fields)  # type: ignore[arg-type]


def test_the_21_seed_event_types_exist_with_lowercase_values() -> None:
    assert len(SEED_EVENT_TYPES) == 21
    for name in SEED_EVENT_TYPES:
        member = EventType[name]
        assert member.value == name.lower()
    # What the integrations need beyond the seed list.
    assert EventType.TRAINING_INTERRUPTED and EventType.TRAINING_STALLED


def test_every_event_type_has_a_default_level() -> None:
    assert set(DEFAULT_LEVELS) == set(EventType)


def test_levels_order_by_severity_not_alphabet() -> None:
    order = [
        NotificationLevel.INFO,
        NotificationLevel.SUCCESS,
        NotificationLevel.WARNING,
        NotificationLevel.ERROR,
        NotificationLevel.CRITICAL,
    ]
    assert sorted(reversed(order)) == order
    assert NotificationLevel.ERROR > NotificationLevel.WARNING
    assert NotificationLevel.CRITICAL >= NotificationLevel.CRITICAL
    assert NotificationLevel.INFO <= NotificationLevel.SUCCESS
    assert not NotificationLevel.ERROR < NotificationLevel.SUCCESS  # "error" < "success" as text
    assert [level.severity for level in order] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("error", NotificationLevel.ERROR),
        ("ERROR", NotificationLevel.ERROR),
        ("  Warning ", NotificationLevel.WARNING),
        (NotificationLevel.INFO, NotificationLevel.INFO),
    ],
)
def test_level_parse_accepts_any_case(text: str, expected: NotificationLevel) -> None:
    assert NotificationLevel.parse(text) is expected


def test_level_parse_error_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown level 'loud'.*info, success, warning, error, critical"):
        NotificationLevel.parse("loud")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nan_detected", EventType.NAN_DETECTED),
        ("NAN_DETECTED", EventType.NAN_DETECTED),
        ("nan-detected", EventType.NAN_DETECTED),
        (EventType.DIGEST, EventType.DIGEST),
    ],
)
def test_event_type_parse_accepts_names_values_and_dashes(text: str, expected: EventType) -> None:
    assert EventType.parse(text) is expected


def test_event_type_parse_error_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="unknown event type 'exploded'"):
        EventType.parse("exploded")


def test_event_accepts_seed_style_strings_and_fills_id_and_utc_time() -> None:
    event = NotificationEvent("training_started", "info", "Started")  # type: ignore[arg-type]
    assert event.event_type is EventType.TRAINING_STARTED
    assert event.level is NotificationLevel.INFO
    assert len(event.id) == 32 and event.id != NotificationEvent("custom", "info", "x").id  # type: ignore[arg-type]
    assert event.timestamp.tzinfo is not None and event.timestamp.utcoffset() == timedelta(0)


def test_event_with_a_bad_level_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown level"):
        NotificationEvent(EventType.CUSTOM, "loud", "x")  # type: ignore[arg-type]


def test_event_accessors_read_the_context() -> None:
    event = make_event()
    assert event.run_id == "r1"
    assert event.model == "bert-tiny"
    assert event.metrics == {"loss": 0.5}
    assert make_event(context={}).metrics == {}
    assert make_event(context={"run_id": 7}).run_id == "7"


def test_dedup_key_is_type_run_and_key() -> None:
    one = make_event(context={"run_id": "r1", "key": "gpu0"})
    assert one.dedup_key == "nan_detected|r1|gpu0"
    assert make_event(context={}).dedup_key == "nan_detected||"


def test_event_is_an_immutable_hashable_value_and_with_changes_keeps_the_id() -> None:
    event = make_event()
    with pytest.raises(AttributeError):
        event.title = "other"  # type: ignore[misc]
    assert len({event, NotificationEvent.from_json(event.to_json())}) == 1
    changed = event.with_changes(title="other")
    assert changed.title == "other" and changed.id == event.id and event.title == "NaN loss"


def test_dict_and_json_round_trip_keeps_every_field() -> None:
    chart = Attachment("loss.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\xff")
    event = make_event(attachments=(chart,))
    for copy in (NotificationEvent.from_dict(event.to_dict()), NotificationEvent.from_json(event.to_json())):
        assert copy == event
        assert copy.attachments[0].data == chart.data
    json.loads(event.to_json())  # strict JSON


def test_nan_and_inf_metrics_survive_json_as_floats() -> None:
    event = make_event(
        context={"run_id": "r", "metrics": {"loss": math.nan, "grad": math.inf, "low": -math.inf, "acc": 0.9}}
    )
    text = event.to_json()
    # Valid JSON without the NaN/Infinity extensions other parsers reject.
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}"))
    metrics = NotificationEvent.from_json(text).metrics
    assert math.isnan(metrics["loss"])
    assert metrics["grad"] == math.inf and metrics["low"] == -math.inf and metrics["acc"] == 0.9


def test_naive_timestamp_is_read_as_utc_and_round_trips() -> None:
    naive = datetime(2024, 5, 1, 12, 30, 15, 123456)
    event = make_event(timestamp=naive)
    assert event.timestamp == naive.replace(tzinfo=timezone.utc)
    assert NotificationEvent.from_json(event.to_json()).timestamp == event.timestamp
    # A record written without a zone (an older tool, a hand-written file) reads the same.
    data = event.to_dict()
    data["timestamp"] = "2024-05-01T12:30:15.123456"
    assert NotificationEvent.from_dict(data).timestamp == event.timestamp


def test_timestamp_in_another_zone_is_stored_as_utc() -> None:
    paris = timezone(timedelta(hours=2))
    event = make_event(timestamp=datetime(2024, 5, 1, 14, 0, tzinfo=paris))
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.timestamp.hour == 12


class _Scalar:
    """Stands for a numpy scalar or a 0-d tensor: convertible with float()."""

    def __float__(self) -> float:
        return 0.25


class _BigTensor:
    """Stands for a multi-element tensor: float() raises RuntimeError, as torch does."""

    def __float__(self) -> float:
        raise RuntimeError("a Tensor with 4 elements cannot be converted to Scalar")

    def __str__(self) -> str:
        return "tensor([1, 2, 3, 4])"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


def test_context_values_become_plain_json() -> None:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    event = make_event(
        context={
            "metrics": {"loss": _Scalar(), "t": _BigTensor()},
            "when": when,
            "level": NotificationLevel.ERROR,
            "shape": (2, 3),
            "tags": {"a"},
            "obj": object(),
            "odd": _Unprintable(),
            1: "int key",
        }
    )
    context = json.loads(event.to_json())["context"]
    assert context["metrics"] == {"loss": 0.25, "t": "tensor([1, 2, 3, 4])"}
    assert context["when"] == when.isoformat()
    assert context["level"] == "error"
    assert context["shape"] == [2, 3] and context["tags"] == ["a"]
    assert context["obj"].startswith("<object object")
    assert context["odd"] == "<unprintable _Unprintable>"
    assert context["1"] == "int key"


def test_from_dict_rejects_unknown_types_with_value_error() -> None:
    data = make_event().to_dict()
    data["event_type"] = "meteor_strike"
    with pytest.raises(ValueError, match="meteor_strike"):
        NotificationEvent.from_dict(data)


def test_attachment_repr_does_not_dump_the_bytes() -> None:
    chart = Attachment("loss.png", "image/png", b"x" * 10_000)
    assert "xxxx" not in repr(chart)
    assert Attachment.from_dict(chart.to_dict()) == chart


def test_key_is_a_field_and_old_context_keys_are_lifted() -> None:
    event = NotificationEvent(EventType.GPU_MEMORY, NotificationLevel.WARNING, "t", context={"key": "gpu0"})
    assert event.key == "gpu0" and event.dedup_key.endswith("|gpu0")
    legacy = NotificationEvent(
        EventType.DIGEST, NotificationLevel.INFO, "d", context={"no_dedup": True, "digest_count": 4}
    )
    assert (legacy.collapse, legacy.digest_count) == (False, 4)
    again = NotificationEvent.from_json(legacy.to_json())
    assert (again.collapse, again.digest_count, again.key) == (False, 4, "")
    old_row = {k: v for k, v in event.to_dict().items() if k != "control"}
    assert NotificationEvent.from_dict(old_row).key == "gpu0"  # rows written before the field


def test_terminal_urgent_and_progress_types_are_disjoint_and_cover_what_a_run_needs() -> None:
    from afs_callbacks.events import PROGRESS_TYPES, TERMINAL_TYPES, URGENT_TYPES

    assert not (
        TERMINAL_TYPES & URGENT_TYPES or TERMINAL_TYPES & PROGRESS_TYPES or URGENT_TYPES & PROGRESS_TYPES
    )
    assert EventType.TRAINING_COMPLETED in TERMINAL_TYPES and EventType.NAN_DETECTED in URGENT_TYPES
    assert EventType.EPOCH_COMPLETED in PROGRESS_TYPES and EventType.TRAINING_STARTED not in PROGRESS_TYPES


def test_event_ids_stay_unique_when_training_code_reseeds_random() -> None:
    """seed_everything/set_seed reseed the global generator; ids must not repeat across runs."""
    import random

    random.seed(1234)
    first = NotificationEvent(EventType.CUSTOM, NotificationLevel.INFO, "a").id
    random.seed(1234)
    second = NotificationEvent(EventType.CUSTOM, NotificationLevel.INFO, "a").id
    assert first != second
