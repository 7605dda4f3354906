"""The seed system's convenience methods (``notify_training_started`` ...), kept for old code.

They word each event exactly as the run tracker does (both use :mod:`afs_callbacks.messages`),
so a run reported through the old API reads the same as one reported by a callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afs_callbacks import messages
from afs_callbacks.events import Attachment, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import describe_exception
from afs_callbacks.redaction import redact


class SeedNotifications:
    """Mixin of the old manager API over :meth:`notify`."""

    def notify(
        self,
        title: str,
        message: str = "",
        event_type: EventType | str = EventType.CUSTOM,
        level: NotificationLevel | str | None = None,
        *,
        attachments: tuple[Attachment, ...] | list[Attachment] = (),
        key: str = "",
        **context: Any,
    ) -> NotificationEvent | None:
        """Accept a notification (implemented by the manager)."""
        raise NotImplementedError

    def notify_training_started(
        self,
        model: str,
        run_id: str,
        epochs: int | None = None,
        batch_size: int | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """Training began."""
        text = messages.training_started(
            model, run_id, plan_text=messages.plan(epochs, batch_size=batch_size)
        )
        return self.notify(
            text.title,
            text.body,
            EventType.TRAINING_STARTED,
            model=model,
            run_id=run_id,
            epochs=epochs,
            batch_size=batch_size,
            **context,
        )

    def notify_training_completed(
        self,
        model: str,
        run_id: str,
        duration: float | None = None,
        loss: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """Training finished; ``duration`` in seconds, ``loss`` the final loss."""
        all_metrics = dict(metrics or {})
        if loss is not None:
            all_metrics.setdefault("loss", loss)
        text = messages.training_completed(
            model, run_id, messages.Summary(duration=duration, final=all_metrics)
        )
        return self.notify(
            text.title,
            text.body,
            EventType.TRAINING_COMPLETED,
            model=model,
            run_id=run_id,
            duration=duration,
            metrics=all_metrics,
            **context,
        )

    def notify_training_failed(
        self, model: str, run_id: str, error: BaseException | str, **context: Any
    ) -> NotificationEvent | None:
        """Training crashed; ``error`` is the exception or its text."""
        detail = describe_exception(error) if isinstance(error, BaseException) else redact(error)
        summary = detail.strip().splitlines()[-1] if detail.strip() else "unknown error"
        text = messages.training_failed(model, detail)
        return self.notify(
            text.title,
            text.body,
            EventType.TRAINING_FAILED,
            model=model,
            run_id=run_id,
            error=summary,
            **context,
        )

    def notify_cost_alert(
        self,
        current_cost: float,
        threshold: float,
        model_name: str | None = None,
        **context: Any,
    ) -> NotificationEvent | None:
        """The run's cost passed ``threshold`` (same currency units as the hourly price)."""
        text = messages.cost_alert(current_cost, threshold, model_name)
        key = str(context.pop("key", "") or f"{threshold:g}")
        return self.notify(
            text.title,
            text.body,
            EventType.COST_THRESHOLD,
            key=key,
            model=model_name,
            cost=current_cost,
            threshold=threshold,
            **context,
        )

    def notify_evaluation_completed(
        self, model: str, run_id: str, metrics: Mapping[str, Any], **context: Any
    ) -> NotificationEvent | None:
        """An evaluation finished with ``metrics``."""
        text = messages.evaluation_completed(model, metrics)
        return self.notify(
            text.title,
            text.body,
            EventType.EVALUATION_COMPLETED,
            model=model,
            run_id=run_id,
            metrics=dict(metrics),
            **context,
        )
