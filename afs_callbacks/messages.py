"""The words of every training event: one title and body per event kind.

The run tracker and the manager's convenience methods (``notify_training_started`` ...)
both build their text here, so an event reads the same whichever way it was sent. Each
builder is a pure function of plain values: no I/O, no clock, no framework.

Numbering: epochs are 1-based in everything shown to people ("Epoch 3/10", ``epoch=3``);
frameworks count from 0 and the tracker converts once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from afs_callbacks.formatting import format_duration, format_metrics, format_value


@dataclass(frozen=True)
class Message:
    """A title and a plain-text body."""

    title: str
    body: str


def smoke_run(text: Message) -> Message:
    """``text`` of a smoke run (Lightning's ``fast_dev_run``): its title says so."""
    return Message(f"{text.title} (smoke run)", text.body)


def join(*parts: str) -> str:
    """The non-empty parts, comma-separated."""
    return ", ".join(part for part in parts if part)


def plan(
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    world_size: int | None = None,
) -> str:
    """What a run is set to do: ``"10 epochs, batch size 32"``."""
    return join(
        f"{epochs} epochs" if epochs and epochs > 0 else "",
        f"{max_steps} steps" if max_steps and max_steps > 0 else "",
        f"batch size {batch_size}" if batch_size else "",
        f"world size {world_size}" if world_size and world_size > 1 else "",
    )


def training_started(
    model: str, run_id: str, *, host: str = "", plan_text: str = "", resumed: bool = False
) -> Message:
    """TRAINING_STARTED / TRAINING_RESUMED."""
    verb = "resumed" if resumed else "started"
    where = f" on {host}" if host else ""
    detail = f" ({plan_text})." if plan_text else "."
    return Message(f"Training {verb}: {model}", f"Run {run_id} {verb}{where}{detail}")


def epoch_completed(model: str, epoch: int, total: int | None, metrics: Mapping[str, float]) -> Message:
    """EPOCH_COMPLETED; ``epoch`` is 1-based."""
    of_total = f"/{total}" if total else ""
    return Message(
        f"Epoch {epoch}{of_total} completed: {model}", format_metrics(metrics) or "no metrics logged"
    )


def evaluation_started(model: str, run_id: str) -> Message:
    """EVALUATION_STARTED."""
    return Message(f"Evaluation started: {model}", f"Run {run_id}: evaluation started.")


def evaluation_completed(model: str, metrics: Mapping[str, float]) -> Message:
    """EVALUATION_COMPLETED."""
    return Message(f"Evaluation completed: {model}", format_metrics(metrics) or "no metrics")


def evaluation_failed(model: str, error_text: str) -> Message:
    """EVALUATION_FAILED; ``error_text`` is the described exception."""
    return Message(f"Evaluation failed: {model}", error_text)


def checkpoint_saved(model: str, path: str) -> Message:
    """CHECKPOINT_SAVED."""
    return Message(f"Checkpoint saved: {model}", f"Saved {path}")


def checkpoint_loading(model: str, path: str) -> Message:
    """CHECKPOINT_LOADING."""
    return Message(f"Loading checkpoint: {model}", f"Restoring from {path}")


def batch_processed(model: str, step: int, loss: float | None) -> Message:
    """BATCH_PROCESSED."""
    return Message(
        f"Step {step}: {model}", f"loss={format_value(loss)}" if loss is not None else f"step {step}"
    )


def nan_detected(model: str, what: str, step: int, epoch: int | None, *, will_stop: bool) -> Message:
    """NAN_DETECTED; ``epoch`` is 1-based."""
    where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
    action = " Training will stop." if will_stop else ""
    return Message(f"NaN/Inf {what}: {model}", f"{what} became NaN or Inf at {where}.{action}")


def metric_improved(model: str, name: str, previous: float | None, value: float | None) -> Message:
    """LOSS_IMPROVED."""
    return Message(f"{name} improved: {model}", f"{name} {format_value(previous)} → {format_value(value)}")


def metric_degraded(
    model: str, name: str, value: float | None, best: float | None, evaluations: int
) -> Message:
    """LOSS_DEGRADED: no better than the best for ``evaluations`` evaluations."""
    return Message(
        f"{name} not improving: {model}",
        f"{name} is {format_value(value)}, no better than {format_value(best)}"
        f" for {evaluations} evaluations.",
    )


def rule_fired(
    model: str, rule: str, detail: str, step: int, epoch: int | None, asks: Sequence[str] = ()
) -> Message:
    """RULE_FIRED: a rule of the run held (``rule`` as written, ``detail``: what it saw;
    ``asks``: ``checkpoint``/``stop`` it also asked for); ``epoch`` is 1-based."""
    where = f"step {step:,}" + (f" (epoch {epoch})" if epoch is not None else "")
    doing = {
        ("checkpoint",): " Saving a checkpoint.",
        ("stop",): " Stopping the run.",
        ("checkpoint", "stop"): " Saving a checkpoint, then stopping the run.",
    }.get(tuple(asks), "")
    return Message(f"Rule “{rule}”: {model}", f"{detail} at {where}.{doing}")


def training_failed(model: str, error_text: str, *, out_of_memory: bool = False) -> Message:
    """TRAINING_FAILED or OUT_OF_MEMORY; ``error_text`` is the described exception."""
    return Message(f"{'Out of memory' if out_of_memory else 'Training failed'}: {model}", error_text)


def training_interrupted(model: str, run_id: str, reason: str, step: int, duration: float) -> Message:
    """TRAINING_INTERRUPTED (Ctrl-C, SIGTERM)."""
    return Message(
        f"Training interrupted: {model}",
        f"Run {run_id} was interrupted ({reason}) at step {step} after {format_duration(duration)}.",
    )


def training_stalled(model: str, idle: float, step: int) -> Message:
    """TRAINING_STALLED."""
    return Message(
        f"Training stalled: {model}",
        f"No step for {format_duration(idle)} (last step {step});"
        " a hung data loader or collective is likely.",
    )


@dataclass(frozen=True)
class Summary:
    """What a completion message says about the run (every part optional)."""

    duration: float | None = None
    final: Mapping[str, float] | None = None
    monitor: str | None = None
    best: float | None = None
    best_epoch: int | None = None  # 1-based
    best_checkpoint: str | None = None
    epochs_run: int | None = None
    total_epochs: int | None = None
    steps_per_second: float | None = None
    samples_per_second: float | None = None
    end_reason: str | None = None
    extra_lines: Sequence[str] = ()


def training_completed(
    model: str, run_id: str, summary: Summary, *, nan_seen: bool = False, stopped_on_nan: bool = False
) -> Message:
    """TRAINING_COMPLETED: a run that reached its end, with its summary.

    A run that saw a NaN/Inf loss and went on (``stop_on_nan`` off) is titled as
    completed *with* a NaN/Inf loss; one that ``stop_on_nan`` stopped says so. The
    tracker sends both as warnings.
    """
    took = f" in {format_duration(summary.duration)}" if summary.duration is not None else ""
    why = f" ({summary.end_reason})" if summary.end_reason else ""
    lines = [f"Run {run_id} finished{took}{why}."]
    if summary.epochs_run:
        lines.append(
            f"Epochs: {summary.epochs_run}" + (f"/{summary.total_epochs}" if summary.total_epochs else "")
        )
    if summary.final:
        lines.append("Final: " + format_metrics(summary.final))
    if summary.best is not None:
        at = f" (epoch {summary.best_epoch})" if summary.best_epoch is not None else ""
        lines.append(f"Best {summary.monitor or 'metric'}: {format_value(summary.best)}{at}")
    if summary.best_checkpoint:
        lines.append(f"Best checkpoint: {summary.best_checkpoint}")
    throughput = join(
        f"{format_value(summary.steps_per_second)} steps/s" if summary.steps_per_second is not None else "",
        f"{format_value(summary.samples_per_second)} samples/s"
        if summary.samples_per_second is not None
        else "",
    )
    if throughput:
        lines.append(f"Throughput: {throughput}")
    lines.extend(summary.extra_lines)
    if stopped_on_nan:
        title = f"Training stopped after NaN/Inf: {model}"
    elif nan_seen:
        title = f"Training completed with a NaN/Inf loss: {model}"
    else:
        title = f"Training completed: {model}"
    return Message(title, "\n".join(lines))


def cost_alert(cost: float, threshold: float, model: str | None = None) -> Message:
    """COST_THRESHOLD: the run's cost passed ``threshold``."""
    who = f" for {model}" if model else ""
    return Message(
        f"Cost alert{who}: ${cost:,.2f}",
        f"Training cost ${cost:,.2f} passed the ${threshold:,.2f} threshold.",
    )


__all__ = [
    "Message",
    "Summary",
    "batch_processed",
    "checkpoint_loading",
    "checkpoint_saved",
    "cost_alert",
    "epoch_completed",
    "evaluation_completed",
    "evaluation_failed",
    "evaluation_started",
    "join",
    "metric_degraded",
    "metric_improved",
    "nan_detected",
    "plan",
    "smoke_run",
    "training_completed",
    "training_failed",
    "training_interrupted",
    "training_stalled",
    "training_started",
]
