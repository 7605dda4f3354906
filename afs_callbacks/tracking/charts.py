"""The loss-curve chart attached to the training summary (``charts`` extra: matplotlib).

Rendering happens once, at the end of a run, off the hot path. Without matplotlib the
summary simply has no chart.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from afs_callbacks._log import get_logger
from afs_callbacks.events import Attachment

log = get_logger(__name__)

CHART_FILENAME = "loss_curve.png"


def loss_chart(
    step_losses: Sequence[tuple[int, float]],
    epoch_metrics: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    *,
    title: str = "Training loss",
) -> Attachment | None:
    """A PNG of the step losses and per-epoch metrics, or None (no data, no matplotlib).

    Args:
        step_losses: ``(step, mean loss)`` points.
        epoch_metrics: ``{"val_loss": [(epoch, value), ...]}`` drawn on a second panel.
        title: the chart title.
    """
    points = [(s, v) for s, v in step_losses if math.isfinite(v)]
    series = {
        name: [(e, v) for e, v in values if math.isfinite(v)]
        for name, values in (epoch_metrics or {}).items()
    }
    series = {name: values for name, values in series.items() if values}
    if not points and not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    try:
        panels = 2 if points and series else 1
        figure = Figure(figsize=(6.4, 2.8 * panels), dpi=100)
        axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
        index = 0
        if points:
            ax = axes[index]
            ax.plot([s for s, _ in points], [v for _, v in points], color="#3b82f6")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            index += 1
        if series:
            ax = axes[index]
            for name, values in sorted(series.items())[:6]:
                ax.plot([e for e, _ in values], [v for _, v in values], marker="o", label=name)
            ax.set_xlabel("epoch")
            ax.legend(fontsize="small")
            ax.grid(alpha=0.3)
            if not points:
                ax.set_title(title)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    except Exception:
        log.exception("afs-callbacks: could not draw the loss chart")
        return None
    return Attachment(CHART_FILENAME, "image/png", buffer.getvalue())
