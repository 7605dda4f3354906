"""Rules (afs_callbacks.rules): reading them, one clear error for a bad one, and each kind
firing at the right reading, once, and again only after its condition cleared.

The runs here are real trackers behind a real manager, outbox and sender with a capturing
channel; metrics are handed to the tracker the way an adapter does (``epoch_end``,
``evaluation_completed``). Figures the periodic look reads (elapsed time, GPU use) are
handed to the run's rules directly with a test clock: no GPU here, and a test cannot wait
ten minutes. ``Monitors.figures`` is read from the NVML stand-in the monitor tests use.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks import EventType, NotificationManager, Settings
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import NotificationLevel
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.monitors import Monitors
from afs_callbacks.monitors.gpu import GPUMonitor
from afs_callbacks.rules import Plateau, Rule, RuleError, Rules, RuleWatch, Spike, Threshold
from afs_callbacks.testing import CapturingHandler
from afs_callbacks.tracking import RunTracker, TrackerConfig
from tests.monitors.fake_nvml import GIB, FakeGPU, FakeNVML

# Reading rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "condition", "actions"),
    [
        ("val_loss < 0.3", Threshold, ["notify warning"]),
        ("val_loss no better by 1% in 5 evaluations -> notify info", Plateau, ["notify info"]),
        ("loss > 3 * best -> stop", Threshold, ["stop"]),
        (
            "loss z-score > 4 over 50 readings -> checkpoint, notify error",
            Spike,
            ["notify error", "checkpoint"],
        ),
        ("elapsed > 6h -> checkpoint and stop", Threshold, ["checkpoint", "stop"]),
        ("cost > 20", Threshold, ["notify warning"]),
        ("gpu_util < 10% for 10m -> notify error", Threshold, ["notify error"]),
        ("train/loss > (best + 0.5) * 2 for 3 readings → stop", Threshold, ["stop"]),
        ("val_acc no higher in 2h", Plateau, ["notify warning"]),
    ],
)
def test_rules_read_as_written(text: str, condition: type, actions: list[str]) -> None:
    rule = Rule.parse(text)
    assert isinstance(rule.condition, condition)
    assert [str(action) for action in rule.actions] == actions
    assert rule.text == text


def test_numbers_carry_their_units() -> None:
    elapsed = Rule.parse("elapsed > 1.5h").condition
    assert isinstance(elapsed, Threshold) and elapsed.expr.value(None, None) == 5400
    idle = Rule.parse("gpu_util < 10% for 10m").condition
    assert isinstance(idle, Threshold) and idle.hold_seconds == 600 and idle.expr.value(None, None) == 10
    plateau = Rule.parse("val_loss no better by 1% in 5 evaluations").condition
    assert isinstance(plateau, Plateau) and (plateau.margin, plateau.relative, plateau.count) == (
        0.01,
        True,
        5,
    )
    divergence = Rule.parse("loss > 3 * best - 1").condition
    assert isinstance(divergence, Threshold) and divergence.expr.value(2.0, 9.0) == 5.0
    assert divergence.expr.value(None, 9.0) is None  # no best yet: nothing to compare


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("val_loss << 0.3", 10, "expected a number, best or first, found '<'"),
        ("val_loss <", 10, "found the end of the rule"),
        ("val_loss < 0.3 -> explode", 18, "expected an action"),
        ("val_loss < 0.3 stop", 15, "unexpected 'stop'"),
        ("val_loss < 0.3 -> notify loud", 25, "unknown level 'loud'"),
        ("val_loss < 0.3 -> notify stop", 25, "separate actions with ','"),
        ("val_loss < 0.3 -> stop, stop", 24, "stop is named twice"),
        ("val_loss < 30%", 11, "a percent compares only gpu_util and gpu_memory"),
        ("val_loss < 1h", 11, "a duration (1h) compares only elapsed"),
        ("elapsed > 6y", 10, "unknown unit 'y'"),
        ("val_loss no better in 5", 23, "expected what to count after 5"),
        ("val_loss no worse in 5 evaluations", 12, "expected 'better', 'lower' or 'higher'"),
        ("loss z-score > 4 over 2 readings", 22, "at least 3 readings"),
        ("0.3 > val_loss", 0, "a rule starts with a metric's name"),
        ("val_loss ~ 0.3", 9, "unexpected character '~'"),
        ("   ", 0, "an empty rule"),
    ],
)
def test_a_bad_rule_is_one_error_naming_the_rule_and_its_column(text: str, column: int, problem: str) -> None:
    with pytest.raises(RuleError) as caught:
        Rule.parse(text)
    error = caught.value
    assert (error.column, error.rule) == (column, text)
    assert problem in error.problem
    first, shown, caret = str(error).splitlines()
    assert f'"{text}"' in first and f"column {column + 1}" in first
    assert shown == f"  {text}" and caret == "  " + " " * column + "^"


def test_the_adapter_names_the_argument_and_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"RunNotifier\(rules\[1\]\): \"loss >> 2\""):
        RunNotifier(rules=["val_loss < 1", "loss >> 2"])
    with pytest.raises(RuleError, match=r"AFS_RULES rule 2: \"elapsed > 6y\""):
        Rules.from_sources(None, env={"AFS_RULES": "val_loss < 1; elapsed > 6y"})


def test_rules_come_from_the_code_and_the_environment_and_count_once() -> None:
    rules = Rules.from_sources(
        "val_loss < 0.3; loss > 3 * best -> stop",
        env={"AFS_RULES": "loss > 3 * best -> stop ;; elapsed > 23h -> checkpoint"},
    )
    assert [rule.text for rule in rules.rules] == [
        "val_loss < 0.3",
        "loss > 3 * best -> stop",
        "elapsed > 23h -> checkpoint",
    ]
    assert rules.acts and not Rules.from_sources(["val_loss < 0.3"], env={}).acts
    assert not Rules.from_sources(None, env={})


# Firing on a run -------------------------------------------------------------------------


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotificationManager]:
    with NotificationManager({"capture": CapturingHandler()}, settings=Settings(state_dir=tmp_path)) as built:
        yield built


def started(manager: NotificationManager, *rules: str, monitor: str | None = None, mode: str = "min") -> Any:
    """A started run with ``rules`` and a test clock; returns (tracker, watch, clock)."""
    tracker = RunTracker(
        manager, TrackerConfig(model_name="tiny", monitor=monitor, mode=mode, monitors=False, chart=False)
    )
    tracker.start(epochs=100)
    clock = [1000.0]
    watch = Rules.from_sources(list(rules), env={}).watch(tracker, clock=lambda: clock[0])
    return tracker, watch, clock


def fired(manager: NotificationManager) -> list[Any]:
    """The rule_fired events the run sent, as the channel got them."""
    report = manager.flush(10)
    assert report.pending == 0, report
    handler = manager.handlers["capture"]
    assert isinstance(handler, CapturingHandler)
    return [event for event in handler.events if event.event_type is EventType.RULE_FIRED]


def epochs(tracker: RunTracker, name: str, values: list[float], steps_per_epoch: int = 10) -> None:
    """One epoch per value, ``steps_per_epoch`` steps each, reported as an adapter does."""
    for index, value in enumerate(values):
        tracker.epoch_started(index)
        for step in range(index * steps_per_epoch + 1, (index + 1) * steps_per_epoch + 1):
            tracker.on_step(step)
        tracker.epoch_end(index, {name: value})


def test_a_threshold_fires_once_and_re_arms_when_it_clears(manager: NotificationManager) -> None:
    tracker, watch, _ = started(manager, "val_loss < 0.3")
    epochs(tracker, "val_loss", [0.5, 0.29, 0.25, 0.2, 0.35, 0.28, 0.27])
    events = fired(manager)
    assert [(e.context["step"], e.context["epoch"]) for e in events] == [(20, 2), (60, 6)]
    first = events[0]
    assert first.level is NotificationLevel.WARNING
    assert first.title == "Rule “val_loss < 0.3”: tiny"
    assert first.message == "val_loss 0.29 < 0.3 at step 20 (epoch 2)."
    assert first.context["rule"] == "val_loss < 0.3", first.context
    assert first.context.get("value") == 0.29, first.context
    assert [f.step for f in watch.firings] == [20, 60]


def test_a_plateau_fires_after_n_readings_without_a_real_improvement(manager: NotificationManager) -> None:
    tracker, _, _ = started(manager, "val_loss no better by 1% in 3 evaluations -> notify info")
    # 1.0 best; 0.995 is within 1%: no improvement; third reading without one fires; 0.9
    # improves (re-arms); three more without fire again.
    epochs(tracker, "val_loss", [1.0, 0.995, 1.2, 0.999, 1.1, 0.9, 0.95, 0.91, 0.92, 0.93])
    events = fired(manager)
    assert [e.context["epoch"] for e in events] == [4, 9]
    assert events[0].level is NotificationLevel.INFO
    assert "val_loss no better than 1 by 1% for 3 readings (latest 0.999)" in events[0].message


def test_better_follows_the_monitored_mode_or_the_name(manager: NotificationManager) -> None:
    tracker, _, _ = started(
        manager,
        "val_acc no better in 2 evaluations",
        "score no better in 2 evaluations",
        monitor="score",
        mode="min",
    )
    for index, (acc, score) in enumerate([(0.5, 3.0), (0.6, 2.0), (0.55, 1.0), (0.58, 2.5), (0.59, 2.6)]):
        tracker.epoch_end(index, {"val_acc": acc, "score": score})
    # val_acc: higher is better (its name); best 0.6 at epoch 2, stale at 3 and 4: fires at 4.
    # score is the monitored metric with mode=min: best 1.0 at epoch 3, fires at 5.
    assert [(e.context["rule"], e.context["epoch"]) for e in fired(manager)] == [
        ("val_acc no better in 2 evaluations", 4),
        ("score no better in 2 evaluations", 5),
    ]


def test_a_divergence_compares_with_the_best_so_far(manager: NotificationManager) -> None:
    tracker, _, _ = started(manager, "train_loss > 3 * best -> notify error")
    epochs(tracker, "train_loss", [1.0, 0.5, 0.4, 1.0, 1.3, 0.9, 1.21, 1.19])
    events = fired(manager)
    assert [e.context["epoch"] for e in events] == [5, 7]
    assert events[0].level is NotificationLevel.ERROR
    assert "train_loss 1.3 > 3 * best = 1.2 (best 0.4)" in events[0].message


def test_a_spike_is_a_z_score_over_the_readings_before_it(manager: NotificationManager) -> None:
    tracker, _, _ = started(manager, "grad_norm z-score > 3 over 5 readings")
    values = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 5.0, 25.0, 1.0, 1.1, 0.9, 1.0, 1.05, 9.0]
    epochs(tracker, "grad_norm", values)
    # 5.0 fires (epoch 7); 25.0 still spikes against a window holding 5.0: no second
    # message; 1.0 clears it; 9.0, against five calm readings, fires again.
    events = fired(manager)
    assert [e.context["epoch"] for e in events] == [7, 14]
    assert "standard deviations from the mean" in events[0].message


def test_a_held_condition_fires_after_its_duration_and_time_rules_read_the_figures(
    manager: NotificationManager,
) -> None:
    _, watch, clock = started(manager, "gpu_util < 10% for 10m -> notify error", "elapsed > 6h")
    readings = [(0, 50.0), (60, 5.0), (300, 4.0), (659, 8.0), (661, 3.0), (700, 2.0), (760, 50.0), (800, 1.0)]
    for at, util in readings:
        clock[0] = 1000.0 + at
        watch.observe({"gpu_util": util, "elapsed": float(at * 40)}, "figures", at, None)
    events = fired(manager)
    # Low from t=60; 10 minutes held at t=661 (not yet at 659); 50% at 760 clears it.
    assert [(e.context["rule"], e.context["step"]) for e in events] == [
        ("elapsed > 6h", 659),  # 659 * 40 s > 6 h; elapsed never clears: once
        ("gpu_util < 10% for 10m -> notify error", 661),
    ]
    assert events[1].message.startswith("gpu_util 3% < 10% for "), events[1].message
    assert events[1].level is NotificationLevel.ERROR


def test_nan_readings_neither_fire_nor_re_arm(manager: NotificationManager) -> None:
    tracker, _, _ = started(manager, "val_loss < 0.3")
    epochs(tracker, "val_loss", [0.2, float("nan"), 0.1, float("inf"), 0.5, 0.2])
    assert [e.context["epoch"] for e in fired(manager)] == [1, 6]


def test_stop_and_checkpoint_go_through_controls_ask_and_are_in_the_commands_table(
    manager: NotificationManager, tmp_path: Path
) -> None:
    tracker, _, _ = started(manager, "val_loss < 0.3 -> checkpoint, stop")
    epochs(tracker, "val_loss", [0.5, 0.2])
    assert tracker.asks_waiting() == (True, True)
    asked = tracker.asked()
    assert asked.stop is not None and asked.checkpoint is not None
    assert asked.stop.source == "rule" and asked.stop.actor == 'rule "val_loss < 0.3 -> checkpoint, stop"'
    assert asked.stop.reason == "val_loss 0.2 < 0.3 at step 20"
    tracker.answered(asked.checkpoint, checkpoint=str(tmp_path / "ckpt"))
    tracker.completed()
    assert not fired(manager), "a rule without notify sends no message of its own"
    handler = manager.handlers["capture"]
    assert isinstance(handler, CapturingHandler)
    [end] = [e for e in handler.events if e.event_type is EventType.TRAINING_COMPLETED]
    assert end.context["outcome"] == "stopped_by_rule"
    assert "val_loss 0.2 < 0.3 at step 20" in end.context["end_reason"]
    from afs_callbacks.control.run import EXIT_WAIT, _recorder

    assert _recorder.drain(EXIT_WAIT * 5)
    with Outbox(tmp_path / "outbox.sqlite3", read_only=True) as store:
        rows = sorted(store.commands(run_ids=[tracker.run_id], limit=None), key=lambda c: c.action)
        state = store.run(tracker.run_id)
    assert [(c.action, c.source, c.state) for c in rows] == [
        ("checkpoint", "rule", "done"),
        ("stop", "rule", "done"),
    ]
    assert state is not None
    [entry] = state.control["rules"]
    assert entry["rule"] == "val_loss < 0.3 -> checkpoint, stop" and entry["step"] == 20


def test_rules_are_read_on_global_rank_zero_only(manager: NotificationManager) -> None:
    notifier = RunNotifier(
        manager, rank=1, world_size=2, rules=["val_loss < 0.3"], monitors=False, chart=False
    )
    with notifier as run:
        run.epoch({"val_loss": 0.1})
        assert notifier.tracker._rules is None


def test_monitors_figures_are_what_gpu_rules_read(
    manager: NotificationManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NVML is the monitor tests' stand-in: this machine has no GPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # every GPU of the stand-in
    nvml = FakeNVML([FakeGPU("GPU-1", utilization=4), FakeGPU("GPU-2", utilization=12, used=60 * GIB)])
    gpu = GPUMonitor(manager, nvml=nvml, util_floor=None)
    gpu.poll_once()
    figures = Monitors(gpu=gpu).figures()
    assert figures["gpu_util"] == 8.0
    assert figures["gpu_memory"] == pytest.approx(75.0)
    assert figures["gpu_temp"] == 60
    assert Monitors().figures() == {}


def test_the_periodic_look_hands_elapsed_and_step_to_the_rules(manager: NotificationManager) -> None:
    tracker, watch, _ = started(manager, "step >= 5 -> notify info")
    seen: list[tuple[dict[str, float], str]] = []
    real = watch.observe

    def spy(values: Any, source: str, step: int, epoch: int | None) -> None:
        seen.append((dict(values), source))
        real(values, source, step, epoch)

    watch.observe = spy  # type: ignore[method-assign]
    for step in range(1, 6):
        tracker.on_step(step)
    tracker._snapshot()  # what the step hook does every SNAPSHOT_INTERVAL seconds
    figures = [values for values, source in seen if source == "figures"]
    assert figures and figures[-1]["step"] == 5.0 and figures[-1]["elapsed"] >= 0
    assert [e.context["step"] for e in fired(manager)] == [5]


def test_a_rule_on_a_metric_the_run_never_logs_is_warned_about(
    manager: NotificationManager, caplog: pytest.LogCaptureFixture
) -> None:
    tracker, _, _ = started(manager, "val_los < 0.3")
    with caplog.at_level("WARNING"):
        epochs(tracker, "val_loss", [0.5, 0.4, 0.3, 0.2])
    warned = [r.getMessage() for r in caplog.records if "val_los" in r.getMessage()]
    assert warned == [
        'afs-callbacks: rule "val_los < 0.3" reads val_los, which this run has not logged;'
        " did you mean val_loss?"
    ]


def test_a_watch_starts_armed_for_each_run(manager: NotificationManager) -> None:
    rules = Rules.from_sources(["val_loss < 0.3"], env={})
    for _ in range(2):
        tracker = RunTracker(manager, TrackerConfig(monitors=False, chart=False))
        tracker.start()
        watch = rules.watch(tracker)
        assert isinstance(watch, RuleWatch)
        tracker.epoch_end(0, {"val_loss": 0.1})
        assert len(watch.firings) == 1
        tracker.completed()


def test_the_card_names_the_rules_that_fired(manager: NotificationManager, tmp_path: Path) -> None:
    from afs_callbacks.channels.card_view import card_view

    tracker, _, _ = started(manager, "val_loss < 0.3", "val_loss no better in 2 evaluations -> notify info")
    epochs(tracker, "val_loss", [0.5, 0.6, 0.7, 0.2])
    tracker.completed()
    manager.flush(10)
    with Outbox(tmp_path / "outbox.sqlite3", read_only=True) as store:
        state = store.run(tracker.run_id)
    assert state is not None
    rules = [value for label, value in card_view(state).fields if label == "Rule"]
    assert len(rules) == 2
    assert rules[0].startswith("val_loss < 0.3: val_loss 0.2 < 0.3 at step 40, ")
    assert rules[1].startswith(
        "val_loss no better in 2 evaluations -> notify info: val_loss no better than 0.5 for 2 readings"
    )


def test_a_gpu_rule_reads_the_monitors_at_the_runs_snapshot(
    manager: NotificationManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NVML is the monitor tests' stand-in (no GPU here), handed to the run as the monitors
    it would have started."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tracker, _, _ = started(manager, "gpu_util < 10% -> notify error", "gpu_memory > 90% -> notify")
    device = FakeGPU("GPU-1", utilization=80)
    gpu = GPUMonitor(manager, nvml=FakeNVML([device]), util_floor=None)
    tracker._monitors = Monitors(gpu=gpu)
    for step, (util, used) in enumerate([(80, 0.5), (5, 0.5), (3, 0.95), (50, 0.5), (4, 0.5)], start=1):
        device.utilization = util
        device.use(used)
        gpu.poll_once()
        tracker.on_step(step)
        tracker._snapshot()  # what the step hook does every SNAPSHOT_INTERVAL seconds
    assert [(e.context["rule"], e.context["step"]) for e in fired(manager)] == [
        ("gpu_util < 10% -> notify error", 2),
        ("gpu_memory > 90% -> notify", 3),
        ("gpu_util < 10% -> notify error", 5),
    ]
