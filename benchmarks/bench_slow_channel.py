"""A slow channel: does a service that takes 2 s to answer slow the training down?

A real training (the tiny model, several epochs) runs side by side:

* without any callback,
* with AFSNotify posting to a loopback webhook receiver that answers at once, then to one
  that answers after 2 s,
* with the usual community notifier, which calls ``requests.post`` in its hooks (at start,
  every epoch end, and the end) and waits for the answer, to the same two receivers.

Reported per variant: the wall time of the ``fit()`` call and of the training loop inside
it (first step to last), each as a ratio to the run without a callback, the messages that
reached the receiver before ``fit()`` returned, and the time ``close()`` then took.
Target (issue #7): training wall time with the slow channel ≤ 1.02× the time without it.

AFSNotify delivers from a background thread, so the loop never waits; when the run ends it
flushes what is still queued (bounded by ``flush_timeout``, 5 s by default) so that the
completion message leaves before the process may exit: a fixed cost per run, not per step.

    python benchmarks/bench_slow_channel.py [--quick] [--delay 2] [--framework keras]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import Report, fresh_state_dir, median, parse_args
from _loops import FRAMEWORKS, afs_callback, available, fit, quiet, sync_callback

from afs_callbacks import Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver, Reply

NONE = "no callback"


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--framework", default="lightning", choices=FRAMEWORKS)
    parser.add_argument("--delay", type=float, help="seconds the slow receiver takes (default 2)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps", type=int, help="steps per epoch")
    parser.add_argument("--rounds", type=int, help="runs of each variant (the median is kept)")


def run_variant(
    name: str, framework: str, receivers: dict[str, LoopbackReceiver], *, epochs: int, steps: int
) -> dict[str, float]:
    """One training with the variant's callbacks; times and message counts."""
    manager: NotificationManager | None = None
    callbacks: list[Any] = []
    receiver = receivers["slow" if "slow" in name else "fast"]
    before = len(receiver.requests)
    if name.startswith("AFSNotify"):
        channel = WebhookNotifier(receiver.url("/hook"))
        manager = NotificationManager({"webhook": channel}, settings=Settings(state_dir=fresh_state_dir()))
        callbacks = [afs_callback(framework, manager)]
    elif name.startswith("requests.post"):
        callbacks = [sync_callback(framework, receiver.url("/hook"))]
    run = fit(framework, callbacks, steps_per_epoch=steps, epochs=epochs)
    during = len(receiver.requests) - before
    close_s = 0.0
    if manager is not None:
        start = time.perf_counter()
        manager.close()
        close_s = time.perf_counter() - start
    return {
        "fit_s": run.wall_s,
        "loop_s": run.loop_s,
        "during": during,
        "total": len(receiver.requests) - before if name != NONE else 0,
        "close_s": close_s,
    }


def main() -> None:
    args = parse_args(__doc__ or "", _options)
    quiet()
    report = Report("slow_channel", args)
    framework = args.framework
    delay = args.delay if args.delay is not None else (0.3 if args.quick else 2.0)
    epochs = args.epochs or (2 if args.quick else 10)
    steps = args.steps or (20 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 2)
    missing = available(framework)
    if missing is not None:
        report.table(f"{framework}: skipped", ("reason",), [(missing,)])
        report.finish()
        return
    slow = f"slow ({delay:g} s)"
    variants = (
        NONE,
        "AFSNotify, fast receiver",
        f"AFSNotify, {slow}",
        "requests.post, fast receiver",
        f"requests.post, {slow}",
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with LoopbackReceiver() as fast, LoopbackReceiver(default=Reply(200, b"ok", delay=delay)) as slow_rx:
        receivers = {"fast": fast, "slow": slow_rx}
        fit(framework, [], steps_per_epoch=20)  # one-time costs
        for round_ in range(rounds):
            shift = round_ % len(variants)
            for name in variants[shift:] + variants[:shift]:
                results[name].append(run_variant(name, framework, receivers, epochs=epochs, steps=steps))
    summary = {
        name: {key: median([r[key] for r in runs]) for key in runs[0]} for name, runs in results.items()
    }
    base = summary[NONE]
    rows = []
    for name in variants:
        s = summary[name]
        rows.append(
            (
                name,
                s["fit_s"],
                f"{s['fit_s'] / base['fit_s']:.3f}×",
                s["loop_s"],
                f"{s['loop_s'] / base['loop_s']:.3f}×",
                f"{s['fit_s'] - s['loop_s'] - (base['fit_s'] - base['loop_s']):.2f}",
                int(s["during"]) if name != NONE else "-",
                int(s["total"]) if name != NONE else "-",
                s["close_s"] if name.startswith("AFSNotify") else "-",
            )
        )
    report.table(
        f"{framework}: {epochs} epochs × {steps:,} steps, receiver delay {delay:g} s,"
        f" median of {rounds} round(s)",
        (
            "variant",
            "fit() s",
            "× none",
            "loop s",
            "× none",
            "extra outside loop s",
            "msgs during fit",
            "msgs in all",
            "close() s",
        ),
        rows,
    )
    afs = summary[f"AFSNotify, {slow}"]
    sync = summary[f"requests.post, {slow}"]
    for label, key in (("training loop", "loop_s"), ("whole fit() call", "fit_s")):
        ratio = afs[key] / base[key]
        report.target(
            f"{framework}: {label} with a {delay:g} s channel",
            "≤ 1.02×",
            f"{ratio:.3f}× (requests.post: {sync[key] / base[key]:.2f}×)",
            ratio <= 1.02,
            "the end-of-run flush, ≤ flush_timeout" if key == "fit_s" and ratio > 1.02 else "",
        )
    report.finish(framework=framework, delay=delay, epochs=epochs, steps=steps, summary=summary)


if __name__ == "__main__":
    main()
