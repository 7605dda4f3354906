"""Backoff (full jitter, server hints capped) and the storm guard (collapse + digest)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.delivery.limits import StormGuard, backoff_delay


def upper_bound(low: float, high: float) -> float:
    assert low == 0.0
    return high


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (7, 100.0), (50, 100.0), (5000, 100.0)],
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, base=2.0, cap=100.0, rng=upper_bound) == ceiling


def test_backoff_is_jittered_between_zero_and_the_ceiling() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, base=1.0, cap=60.0, rng=rng.uniform) for _ in range(500)]
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert len({round(delay, 3) for delay in delays}) > 400  # spread, not synchronised
    assert min(delays) < 2.0 and max(delays) > 6.0


@pytest.mark.parametrize(("hint", "expected"), [(0.0, 0.0), (1.5, 1.5), (3600.0, 900.0)])
def test_server_hint_wins_capped_at_max_hint(hint: float, expected: float) -> None:
    assert backoff_delay(1, base=2.0, cap=300.0, hint=hint, max_hint=900.0, rng=upper_bound) == expected


def test_negative_hint_is_ignored() -> None:
    assert backoff_delay(1, base=2.0, cap=300.0, hint=-5.0, rng=upper_bound) == 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nan(run: str = "r1", key: str = "", **context: object) -> NotificationEvent:
    return NotificationEvent(
        EventType.NAN_DETECTED,
        NotificationLevel.ERROR,
        "NaN loss",
        f"NaN at step {context.get('step', 0)}",
        {"run_id": run, **context},
        key=key,
    )


def test_repeats_of_one_key_inside_the_window_collapse_into_one_digest_with_the_count() -> None:
    clock = FakeClock()
    guard = StormGuard(60.0, clock=clock)
    assert guard.admit(nan(step=0, key="loss")) == (True, None)
    for step in range(1, 1533):
        clock.now += 0.01
        assert guard.admit(nan(step=step, key="loss")) == (False, None)
    assert guard.has_suppressed()
    assert guard.due_digests() == []  # the window is still open
    clock.now += 60.0
    [digest] = guard.due_digests()
    assert digest.digest_count == 1532 and not digest.collapse
    assert digest.context["digest_window_s"] == 60.0
    assert "1,532" in digest.title and "60 s" in digest.title
    assert "NaN at step 1532" in digest.message  # the latest occurrence
    assert digest.event_type is EventType.NAN_DETECTED and digest.context["run_id"] == "r1"
    assert not guard.has_suppressed()
    # The digest itself is never collapsed.
    assert guard.admit(digest) == (True, None)


def custom(
    title: str, message: str = "", run: str = "r1", kind: EventType = EventType.CUSTOM
) -> NotificationEvent:
    return NotificationEvent(kind, NotificationLevel.INFO, title, message, {"run_id": run})


def test_only_the_same_content_or_key_is_a_repeat() -> None:
    guard = StormGuard(60.0, clock=FakeClock())
    # Three notify() calls with different titles: three messages.
    assert all(guard.admit(custom(title))[0] for title in ("data loaded", "model built", "tuning done"))
    # validate() then test(): one type, one run, different metrics.
    evaluation = EventType.EVALUATION_COMPLETED
    assert guard.admit(custom("Evaluation completed: m", "val_loss=0.31", kind=evaluation))[0]
    assert guard.admit(custom("Evaluation completed: m", "test_loss=0.35", kind=evaluation))[0]
    # The very same message again is a repeat ...
    assert not guard.admit(custom("data loaded"))[0]
    # ... and so are an alert's different texts that name the same explicit key.
    assert guard.admit(nan(step=1, key="gpu0"))[0]
    assert not guard.admit(nan(step=2, key="gpu0"))[0]
    assert guard.admit(nan(step=2, key="gpu1"))[0]


def keyed(level: NotificationLevel, message: str, key: str = "eval-0-120") -> NotificationEvent:
    return NotificationEvent(
        EventType.EVALUATION_COMPLETED,
        level,
        "Evaluation completed: tiny",
        message,
        {"run_id": "r1"},
        key=key,
    )


@pytest.mark.parametrize(
    ("first", "second", "repeat"),
    [
        # Information with a key (the tracker keys its evaluations by count and step): two
        # standalone evaluations at the same step with other numbers are two messages ...
        (keyed(NotificationLevel.INFO, "loss 3.865"), keyed(NotificationLevel.INFO, "loss 25.53"), False),
        # ... the same numbers twice are one.
        (keyed(NotificationLevel.INFO, "loss 3.865"), keyed(NotificationLevel.INFO, "loss 3.865"), True),
        # The same text under another key is not the same thing either.
        (keyed(NotificationLevel.INFO, "x", key="a"), keyed(NotificationLevel.INFO, "x", key="b"), False),
        # An alert's key names a condition that persists while its numbers move.
        (keyed(NotificationLevel.WARNING, "91 %"), keyed(NotificationLevel.WARNING, "92 %"), True),
        (keyed(NotificationLevel.CRITICAL, "a"), keyed(NotificationLevel.CRITICAL, "b"), True),
    ],
)
def test_a_key_collapses_other_texts_only_for_alerts(
    first: NotificationEvent, second: NotificationEvent, repeat: bool
) -> None:
    guard = StormGuard(60.0, clock=FakeClock())
    assert guard.admit(first)[0]
    assert guard.admit(second)[0] is not repeat


class CountingDict(dict[str, Any]):
    """A dict that counts the items its ``items()`` iterations visit."""

    visited = 0

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for item in super().items():
            self.visited += 1
            yield item


def test_a_full_guard_whose_windows_are_open_costs_one_look_per_event() -> None:
    """10,000 open windows (a burst of distinct messages) must not make every admit visit
    all of them: the sweep stops at the first window still open."""
    clock = FakeClock()
    guard = StormGuard(60.0, clock=clock, max_keys=10_000)
    windows = guard._windows = CountingDict()
    for index in range(10_000):
        clock.now += 0.001
        guard.admit(custom(f"burst {index}"))
    windows.visited = 0
    for index in range(1000):
        assert guard.admit(custom(f"later {index}"))[0]  # over the bound: passes uncollapsed
    assert windows.visited <= 1000
    clock.now += 61  # now every window has closed: one sweep takes them all
    assert guard.admit(custom("after the window"))[0]
    assert len(windows) == 1


def test_text_that_is_not_valid_unicode_still_gets_a_key() -> None:
    guard = StormGuard(60.0, clock=FakeClock())
    broken = custom("file \udcff.csv")  # a lone surrogate from a non-UTF-8 file name
    assert guard.admit(broken)[0]
    assert not guard.admit(custom("file \udcff.csv"))[0]


def test_an_expired_window_hands_its_digest_to_the_next_event() -> None:
    clock = FakeClock()
    guard = StormGuard(10.0, clock=clock)
    guard.admit(nan())
    guard.admit(nan())
    clock.now += 11
    admitted, digest = guard.admit(nan())
    assert admitted and digest is not None and digest.digest_count == 1


def test_a_single_event_gives_no_digest() -> None:
    clock = FakeClock()
    guard = StormGuard(10.0, clock=clock)
    guard.admit(nan())
    clock.now += 11
    assert guard.due_digests() == [] and not guard.has_suppressed()


def test_different_runs_keys_and_types_do_not_collapse_together() -> None:
    guard = StormGuard(60.0, clock=FakeClock())
    assert guard.admit(nan(run="r1"))[0]
    assert guard.admit(nan(run="r2"))[0]
    assert guard.admit(nan(run="r1", key="gpu1"))[0]
    other = NotificationEvent(
        EventType.OUT_OF_MEMORY, NotificationLevel.CRITICAL, "OOM", "", {"run_id": "r1"}
    )
    assert guard.admit(other)[0]
    assert not guard.admit(nan(run="r1"))[0]


def test_zero_window_collapse_false_and_no_dedup_disable_collapsing() -> None:
    off = StormGuard(0.0, clock=FakeClock())
    assert all(off.admit(nan())[0] for _ in range(5))
    guard = StormGuard(60.0, clock=FakeClock())
    assert all(guard.admit(nan(no_dedup=True))[0] for _ in range(5))  # an older producer's flag
    assert all(guard.admit(nan().with_changes(collapse=False))[0] for _ in range(5))


def test_flush_all_closes_open_windows() -> None:
    guard = StormGuard(60.0, clock=FakeClock())
    for _ in range(4):
        guard.admit(nan())
    [digest] = guard.due_digests(flush_all=True)
    assert digest.digest_count == 3


def test_key_bound_lets_new_keys_through_and_keeps_swept_digests() -> None:
    clock = FakeClock()
    guard = StormGuard(10.0, clock=clock, max_keys=3)
    for run in ("a", "b", "c"):
        guard.admit(nan(run=run))
    guard.admit(nan(run="a"))  # one repeat held back
    assert guard.admit(nan(run="d"))[0]  # over the bound, open windows: passes uncollapsed
    assert guard.admit(nan(run="d"))[0]
    clock.now += 11
    assert guard.admit(nan(run="e"))[0]  # the sweep makes room ...
    [digest] = guard.due_digests()  # ... and the swept digest is not lost
    assert digest.context["run_id"] == "a" and digest.digest_count == 1
