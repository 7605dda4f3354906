"""The words of every training event: one title and body per event kind.

The run tracker and the manager's convenience methods (``notify_training_started`` ...)
both build their text here, so an event reads the same whichever way it was sent. Each
builder is a pure function of plain values: no I/O, no clock, no framework.

Numbering: epochs are 1-based in everything shown to people ("Epoch 3/10", ``epoch=3``);
frameworks count from 0 and the tracker converts once.

The end of a run is titled by its :class:`~afs_callbacks.outcome.Outcome` (decided by the
tracker, never here): the outcome's icon, ``Training`` and its label, a short why in
parentheses where there is one, and the model — ``⚠️ Training completed with warnings
(Inf loss at step 3): resnet50``, ``⏹️ Training stopped early (EarlyStopping on val_loss,
patience 3): resnet50``. A channel that puts the level's symbol in front of titles leaves
an outcome's icon alone (:func:`afs_callbacks.formatting.marked_title`).

Each fact is said once: what channels show as fields beside the text (the run id, the
duration, the epoch and step, the final metrics) is not repeated in the text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from afs_callbacks.formatting import ErrorReport, format_duration, format_metrics, format_rate, format_value
from afs_callbacks.outcome import Outcome


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


def count(number: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"1,200 steps"``."""
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def end_title(outcome: Outcome, model: str, why: str = "") -> str:
    """The title of a run's end: ``🛑 Training stopped on a problem (NaN loss at step 5): m``."""
    detail = f" ({why})" if why else ""
    subject = "Trial" if outcome is Outcome.PRUNED else "Training"  # only a sweep's trial is pruned
    return f"{outcome.icon} {subject} {outcome.label}{detail}: {model}"


def plan(
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    world_size: int | None = None,
) -> str:
    """What a run is set to do: ``"10 epochs, batch size 32"``."""
    return join(
        count(epochs, "epoch") if epochs and epochs > 0 else "",
        count(max_steps, "step") if max_steps and max_steps > 0 else "",
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


@dataclass(frozen=True)
class NonFinite:
    """The first NaN/Inf a run saw: which value, where it first happened, where it was seen.

    Args:
        metric: ``loss`` (the training loss), ``grad_norm``, ``val_loss``...
        value: the bad value (NaN, Inf or -Inf); None when not known which.
        step: the optimizer step where it first happened.
        epoch: that step's epoch (1-based), when known.
        seen_step: the step where the check found it, when that is later (the loss is
            read once per window of steps).
        at_epoch_end: the metric is computed at the end of ``epoch`` (a validation loss).
    """

    metric: str
    value: float | None
    step: int
    epoch: int | None = None
    seen_step: int | None = None
    at_epoch_end: bool = False

    @property
    def kind(self) -> str:
        """``"NaN"``, ``"Inf"``, ``"-Inf"``, or ``"NaN/Inf"`` when not known which."""
        if self.value is None or math.isfinite(self.value):
            return "NaN/Inf"
        return format_value(self.value)

    def short(self) -> str:
        """For a title: ``"Inf loss at step 3"``, ``"NaN val_loss at epoch 2"``."""
        where = (
            f"epoch {self.epoch}" if self.at_epoch_end and self.epoch is not None else f"step {self.step:,}"
        )
        return f"{self.kind} {self.metric} at {where}"

    def words(self) -> str:
        """The sentence (no full stop): ``"loss became Inf at step 3 (epoch 1), seen at
        step 8"``; ``"val_loss became NaN at the end of epoch 2 (step 16)"``."""
        became = "NaN or Inf" if self.kind == "NaN/Inf" else self.kind
        if self.at_epoch_end and self.epoch is not None:
            return f"{self.metric} became {became} at the end of epoch {self.epoch} (step {self.step:,})"
        where = f"step {self.step:,}" + (f" (epoch {self.epoch})" if self.epoch is not None else "")
        seen = f", seen at step {self.seen_step:,}" if self.seen_step and self.seen_step > self.step else ""
        return f"{self.metric} became {became} at {where}{seen}"


def nan_detected(model: str, found: NonFinite, *, will_stop: bool) -> Message:
    """NAN_DETECTED: the first non-finite value, where it happened and where it was seen."""
    action = " Training will stop." if will_stop else ""
    return Message(f"{found.short()}: {model}", f"{found.words()}.{action}")


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


def training_failed(
    model: str,
    error: ErrorReport | str,
    *,
    out_of_memory: bool = False,
    step: int | None = None,
    epoch: int | None = None,
) -> Message:
    """TRAINING_FAILED or OUT_OF_MEMORY (outcome ``failed``); ``epoch`` is 1-based.

    The body leads with the error: its first line is the exception's type and message,
    the second where it happened in the user's own code (and at which epoch and step),
    then the user's frames with the frameworks' folded (:meth:`ErrorReport.text`). A
    described exception given as text is the body as it is.
    """
    body = error.text(step=step, epoch=epoch) if isinstance(error, ErrorReport) else error
    icon = Outcome.FAILED.icon
    return Message(f"{icon} {'Out of memory' if out_of_memory else 'Training failed'}: {model}", body)


def training_interrupted(
    model: str, reason: str, step: int, *, outcome: Outcome = Outcome.INTERRUPTED
) -> Message:
    """TRAINING_INTERRUPTED: Ctrl-C (``interrupted``) or SIGTERM, a preemption, a SLURM
    requeue (``preempted``). The run id and duration are the event's fields."""
    return Message(end_title(outcome, model, _signal_words(reason)), f"Stopped by {reason} at step {step:,}.")


def _signal_words(reason: str) -> str:
    """What stopped a run, in a word or two: ``Ctrl-C``, ``SIGTERM``, ``SLURM requeue``."""
    words = reason.lower()
    if "ctrl-c" in words or "keyboardinterrupt" in words:
        return "Ctrl-C"
    if "requeue" in words:
        return "SLURM requeue"
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if name.lower() in words:
            return name
    return ""


def training_stalled(model: str, idle: float, step: int) -> Message:
    """TRAINING_STALLED."""
    return Message(
        f"Training stalled: {model}",
        f"No step for {format_duration(idle)} (last step {step});"
        " a hung data loader or collective is likely.",
    )


@dataclass(frozen=True)
class Summary:
    """What a completion message says about the run (every part optional).

    ``end_reason`` is the framework's words (``early_stopping (val_loss, patience 3,
    best 0.21)``); ``reason_text`` the same for people (``EarlyStopping on val_loss,
    patience 3``), given by the tracker, which owns those words.
    """

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
    reason_text: str = ""
    extra_lines: Sequence[str] = ()


def training_completed(
    model: str,
    run_id: str,
    summary: Summary,
    *,
    outcome: Outcome = Outcome.COMPLETED,
    non_finite: NonFinite | None = None,
) -> Message:
    """TRAINING_COMPLETED: a run that ended without an error, titled by its ``outcome``.

    The text says what the fields beside it do not: why and how far the run went, the
    first NaN/Inf it saw, its best metric and checkpoint, its throughput and the monitors'
    lines. The run id, the duration, the last epoch and step and the final metrics are
    the event's fields, which every channel shows (``run_id`` is kept for the old API).
    """
    del run_id  # a field of the event: said once, there
    title_why = summary.reason_text if outcome is not Outcome.COMPLETED_WITH_WARNINGS else ""
    if non_finite is not None and outcome in (Outcome.STOPPED_ON_PROBLEM, Outcome.COMPLETED_WITH_WARNINGS):
        title_why = non_finite.short()
    lines = [_how_it_ended(outcome, summary, non_finite)]
    if summary.best is not None:
        at = f" (epoch {summary.best_epoch})" if summary.best_epoch is not None else ""
        lines.append(f"Best {summary.monitor or 'metric'}: {format_value(summary.best)}{at}")
    if summary.best_checkpoint:
        lines.append(f"Best checkpoint: {summary.best_checkpoint}")
    throughput = join(
        f"{format_rate(summary.steps_per_second)} steps/s" if summary.steps_per_second is not None else "",
        f"{format_rate(summary.samples_per_second)} samples/s"
        if summary.samples_per_second is not None
        else "",
    )
    if throughput:
        lines.append(f"Throughput: {throughput}")
    lines.extend(summary.extra_lines)
    return Message(end_title(outcome, model, title_why), "\n".join(line for line in lines if line))


def _how_it_ended(outcome: Outcome, summary: Summary, non_finite: NonFinite | None) -> str:
    """The first line: why the run ended and how far it went, in one sentence."""
    far = ""
    if summary.epochs_run:
        total = f" of {summary.total_epochs:,}" if summary.total_epochs else ""
        noun = "epoch" if (summary.total_epochs or summary.epochs_run) == 1 else "epochs"
        far = f" after {summary.epochs_run:,}{total} {noun}"
    why = summary.reason_text
    if outcome is Outcome.STOPPED_ON_PROBLEM:
        if non_finite is None:
            return "Stopped on a problem" + (f" ({why})" if why else "") + f"{far}."
        rule = why or summary.end_reason
        head = "Stopped at the first NaN/Inf" + (f" ({rule})" if rule else "")
        return f"{head}{',' if far else ''}{far}: {non_finite.words()}."
    if outcome in (Outcome.COMPLETED, Outcome.COMPLETED_WITH_WARNINGS, Outcome.STOPPED_EARLY):
        if why:
            head = f"Stopped early by {why}"
        else:
            head = "Finished" + (f" ({summary.end_reason})" if summary.end_reason else "")
        but = f", but {non_finite.words()}" if non_finite is not None else ""
        return f"{head}{far}{but}."
    return outcome.label.capitalize() + (f" ({why})" if why else "") + f"{far}."


#: Earlier messages a run's story shows line by line; beyond it the middle ones are counted.
STORY_LINES = 8
#: Characters one story line keeps of a message (its first line).
STORY_LINE_CHARS = 200


@dataclass(frozen=True)
class StoryLine:
    """One earlier message of a run as its story tells it: when, and what."""

    seconds: float  # after the story's first message
    text: str


def run_story(
    end: Message, told: Sequence[StoryLine], ending: str, ended_after: float, run_id: str
) -> Message:
    """The end of a run told with the earlier messages that had not gone out: the end's
    title and its own body first (a failure leads with its error, as everywhere); then,
    under "Earlier in this run:", the earlier messages in order, each with how long after
    the first it came, and how the run ended (``ending``: an outcome's label) and when.

    A long story keeps its first and last lines and counts the ones between, naming the
    command that lists them all.
    """
    shown: list[StoryLine | str] = list(told)
    if len(told) > STORY_LINES:
        head, tail = 2, STORY_LINES - 3
        hidden = len(told) - head - tail
        shown = [
            *told[:head],
            f"… {hidden} more: afs-notify history --run {run_id}",
            *told[-tail:],
        ]
    lines = []
    for index, line in enumerate(shown):
        if isinstance(line, str):
            lines.append(line)
            continue
        text = _one_line(line.text)
        lines.append(text if index == 0 else f"{_later(line.seconds)}: {text}")
    lines.append(f"{_later(ended_after)}: {ending}.")
    story = "Earlier in this run:\n" + "\n".join(lines)
    return Message(end.title, f"{end.body}\n\n{story}" if end.body else story)


def _later(seconds: float) -> str:
    """``2.5s later``; ``then`` for what came within a tenth of a second ("0.0s later"
    reads as a glitch)."""
    return f"{format_duration(seconds)} later" if seconds >= 0.1 else "then"


def _one_line(text: str) -> str:
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    return first if len(first) <= STORY_LINE_CHARS else first[: STORY_LINE_CHARS - 1].rstrip() + "…"


def cost_alert(cost: float, threshold: float, model: str | None = None) -> Message:
    """COST_THRESHOLD: the run's cost passed ``threshold``."""
    who = f" for {model}" if model else ""
    return Message(
        f"Cost alert{who}: ${cost:,.2f}",
        f"Training cost ${cost:,.2f} passed the ${threshold:,.2f} threshold.",
    )


__all__ = [
    "STORY_LINES",
    "Message",
    "NonFinite",
    "StoryLine",
    "Summary",
    "batch_processed",
    "checkpoint_loading",
    "checkpoint_saved",
    "cost_alert",
    "count",
    "end_title",
    "epoch_completed",
    "evaluation_completed",
    "evaluation_failed",
    "evaluation_started",
    "join",
    "metric_degraded",
    "metric_improved",
    "nan_detected",
    "plan",
    "run_story",
    "smoke_run",
    "training_completed",
    "training_failed",
    "training_interrupted",
    "training_stalled",
    "training_started",
]
