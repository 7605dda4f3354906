"""RunNotifier around a real (tiny) PyTorch loop, its events going through the real outbox
and a real webhook channel to a loopback HTTP receiver."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from afs_callbacks import EventType, NotificationEvent, NotificationLevel  # noqa: E402
from afs_callbacks.integrations.loop import RunNotifier  # noqa: E402
from tests.integrations.conftest import delivered  # noqa: E402

QUIET = {"monitors": False, "stall_timeout": None, "chart": False}


def by_type(events: list[NotificationEvent]) -> dict[EventType, NotificationEvent]:
    """The last event of each type."""
    return {event.event_type: event for event in events}


def train(run: RunNotifier, *, epochs: int = 3, steps: int = 4, nan_at: int | None = None) -> None:
    """Fit y = 2x with SGD, reporting every step and epoch to ``run``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(16, 1)
    for _ in range(epochs):
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), 2 * x)
            if nan_at is not None and run.tracker.steps + 1 >= nan_at:
                loss = loss * float("nan")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if run.step(loss=loss.detach()):
                return
        with torch.no_grad():
            run.epoch({"val_loss": torch.nn.functional.mse_loss(model(x), 2 * x)})


def test_a_loop_is_announced_and_completes_with_its_summary(manager, receiver):
    with RunNotifier(manager, model_name="linear", total_steps=12, epochs=3, batch_size=16, **QUIET) as run:
        train(run)
        run.checkpoint("/tmp/best.pt", best=True)
    events = by_type(delivered(manager, receiver))
    started, completed = events[EventType.TRAINING_STARTED], events[EventType.TRAINING_COMPLETED]
    assert started.title == "Training started: linear" and started.context["max_steps"] == 12
    assert completed.run_id == started.run_id and completed.context["steps"] == 12
    assert completed.context["end_reason"] == "max_steps" and completed.context["epochs_run"] == 3
    assert completed.context["best"]["epoch"] == 3 and completed.context["best_checkpoint"] == "/tmp/best.pt"
    assert completed.context["samples_per_second"] > 0


def test_an_exception_is_reported_as_a_failure_and_raised_again(manager, receiver):
    with (
        pytest.raises(RuntimeError, match="data loader died"),
        RunNotifier(manager, model_name="linear", **QUIET),
    ):
        raise RuntimeError("data loader died")
    events = by_type(delivered(manager, receiver))
    failed = events[EventType.TRAINING_FAILED]
    assert failed.context["error_type"] == "RuntimeError" and EventType.TRAINING_COMPLETED not in events


def test_ctrl_c_is_an_interruption(manager, receiver):
    with pytest.raises(KeyboardInterrupt), RunNotifier(manager, model_name="linear", **QUIET) as run:
        run.step(loss=1.0)
        raise KeyboardInterrupt
    interrupted = by_type(delivered(manager, receiver))[EventType.TRAINING_INTERRUPTED]
    assert interrupted.context["step"] == 1 and "Ctrl-C" in interrupted.message


def test_a_nan_loss_stops_the_loop_when_asked(manager, receiver):
    with RunNotifier(manager, model_name="linear", stop_on_nan=True, nan_check_every=2, **QUIET) as run:
        train(run, nan_at=3)
        assert run.should_stop
    events = by_type(delivered(manager, receiver))
    nan = events[EventType.NAN_DETECTED]
    # The first bad step, though the window was read at its end (step 4).
    assert (nan.context["step"], nan.context["seen_step"]) == (3, 4)
    assert nan.message.startswith("loss became NaN at step 3 (epoch 1), seen at step 4.")
    completed = events[EventType.TRAINING_COMPLETED]
    assert completed.context["outcome"] == "stopped_on_problem" and completed.level is NotificationLevel.ERROR
    assert completed.context["end_reason"] == "stop_on_nan"


def test_bad_arguments_name_the_class():
    with pytest.raises(ValueError, match=r"RunNotifier\(patience=-1\)"):
        RunNotifier(patience=-1)
    with pytest.raises(ValueError, match=r"RunNotifier\(total_steps=0\)"):
        RunNotifier(total_steps=0)
