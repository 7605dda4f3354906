"""Rules that act: a condition on what a run reports, and what to do when it holds.

Declared as text, in code or in the environment::

    AFSNotify(rules=[
        "val_loss < 0.3",                                        # notify (warning), once
        "val_loss no better by 1% in 5 evaluations -> notify info",
        "loss > 3 * best -> stop",                               # divergence
        "loss z-score > 4 over 50 readings -> checkpoint",       # a spike
        "elapsed > 23h -> checkpoint, stop",                     # a time budget
        "cost > 20 -> notify error",
        "gpu_util < 10% for 10m -> notify error",                # a wasted reservation
    ])

    AFS_RULES="val_loss < 0.3; elapsed > 23h -> checkpoint, stop"

The syntax (``docs/rules.md`` has the whole of it, with examples)::

    rule       := condition [ "->" action { "," action } ]
    condition  := NAME ("<" | "<=" | ">" | ">=") expr [ "for" (DURATION | N "readings") ]
                | NAME "no" ("better" | "lower" | "higher") [ "by" AMOUNT ] "in" (N "evaluations" | DURATION)
                | NAME "z-score" (">" | "<") NUMBER "over" N "readings"
    expr       := a number (``0.3``, ``10%``, ``6h``), ``best``, ``first``, with ``+ - * /``
                  and parentheses: ``3 * best``, ``best + 0.5``
    action     := "notify" [ info | success | warning | error | critical ] | "checkpoint" | "stop"

A name is a logged metric (``val_loss``, ``eval_accuracy``), the training ``loss`` (one
reading per loss window of ``nan_check_every`` steps, read off the training thread), or a
figure of the run: ``elapsed`` (seconds), ``step``, ``epoch``, ``cost``, ``gpu_util`` (mean
percent over the run's GPUs), ``gpu_memory`` (highest percent used), ``gpu_temp`` (°C).

Each rule fires once and re-arms when its condition clears (the metric back above the
threshold, an improvement after a plateau). When it fires: ``notify`` sends a
``rule_fired`` event at its level (default warning); ``checkpoint`` and ``stop`` ask the
run through :func:`afs_callbacks.control.ask` with source ``rule``, recorded in the
commands table like any command, and a stop ends the run with the outcome
``stopped_by_rule``. The live card lists the rules that fired.

Where rules are read: :class:`Rules` (parsed once, immutable) is what an adapter holds;
:meth:`Rules.watch` gives a started run its :class:`RuleWatch`, which the tracker hands
what it already processes: the metrics of an epoch or evaluation, each loss window's mean,
and the run's figures every few seconds with its snapshot. Nothing runs per step, and
nothing reads a device: a rule costs the training thread nothing between those points.
A rule on figures (``elapsed``, ``gpu_util``) is looked at only while the run steps; a run
that makes no step at all is the stall watchdog's.

A bad rule raises :class:`RuleError` at construction, naming the rule and the column::

    AFSNotify(rules[1]): "val_loss << 0.3": expected a number, best or first, found '<'
      val_loss << 0.3
                ^
"""

from __future__ import annotations

import difflib
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afs_callbacks import messages
from afs_callbacks._log import get_logger
from afs_callbacks.config import Env
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import format_duration, format_value
from afs_callbacks.tracking.asks import CHECKPOINT, STOP
from afs_callbacks.tracking.tracker import RunTracker

log = get_logger(__name__)

#: The environment variable of rules, ``;``-separated.
ENV_VARIABLE = "AFS_RULES"
NOTIFY = "notify"
#: What a rule can do, in the order it does them (a message first, then the asks).
ACTIONS = (NOTIFY, CHECKPOINT, STOP)
#: The level of ``notify`` without one.
DEFAULT_LEVEL = NotificationLevel.WARNING
#: Figures of the run a rule can name beside its metrics (what the periodic look reads).
FIGURES = ("elapsed", "step", "epoch", "cost", "gpu_util", "gpu_memory", "gpu_temp")
#: Figures measured in percent: the only names a ``%`` threshold compares.
PERCENT_FIGURES = ("gpu_util", "gpu_memory")
#: Words that make "better" mean higher (accuracy and the like); any other name is a loss.
_HIGHER_IS_BETTER = re.compile(
    r"acc|f1|auc|bleu|rouge|precision|recall|map\b|iou|dice|r2|score|reward|return|top\d"
)
#: Rules a card lists, the latest first.
CARD_RULES = 3
#: Metric readings after which a rule naming a metric never seen is worth a warning.
UNSEEN_WARN_AFTER = 3
_COUNT_WORDS = ("evaluations", "evaluation", "epochs", "epoch", "readings", "reading", "windows", "times")
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}


class RuleError(ValueError):
    """A rule that cannot be read: the message names where it came from, the rule, what
    was expected and the column (a caret under it).

    Attributes:
        rule: the rule as written.
        column: 0-based position of the problem in ``rule``.
        problem: what is wrong, in words.
        origin: where the rule came from (``AFSNotify(rules[1])``, ``AFS_RULES rule 2``).
    """

    def __init__(self, rule: str, column: int, problem: str, origin: str = "rule") -> None:
        self.rule = rule
        self.column = max(0, min(column, len(rule)))
        self.problem = problem
        self.origin = origin
        caret = " " * self.column + "^"
        super().__init__(f'{origin}: "{rule}": {problem} (column {self.column + 1})\n  {rule}\n  {caret}')

    def located(self, origin: str) -> RuleError:
        """The same error, saying where the rule came from."""
        return RuleError(self.rule, self.column, self.problem, origin)


# Conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    """A right-hand side: numbers, ``best`` and ``first`` of the rule's metric, ``+ - * /``.

    ``terms`` is the expression in reverse Polish notation (numbers, names, operators).
    """

    terms: tuple[float | str, ...]
    text: str

    @property
    def references(self) -> bool:
        """Whether it names ``best`` or ``first`` (then it is said with its value)."""
        return any(term in ("best", "first") for term in self.terms)

    def value(self, best: float | None, first: float | None) -> float | None:
        """The value now; None while ``best``/``first`` are unknown (or dividing by 0)."""
        stack: list[float] = []
        for term in self.terms:
            if isinstance(term, float):
                stack.append(term)
            elif term in ("best", "first"):
                known = best if term == "best" else first
                if known is None:
                    return None
                stack.append(known)
            elif term == "neg":
                stack.append(-stack.pop())
            else:
                right, left = stack.pop(), stack.pop()
                if term == "/" and right == 0:
                    return None
                stack.append(_ARITHMETIC[term](left, right))
        return stack[0]


_ARITHMETIC: Mapping[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Threshold:
    """``NAME OP EXPR [for DURATION | for N readings]``: a threshold, or a divergence when
    the right side names ``best``/``first``; held for a while with ``for``."""

    metric: str
    op: str
    expr: Expr
    hold_seconds: float | None = None
    hold_readings: int | None = None


@dataclass(frozen=True)
class Plateau:
    """``NAME no better [by AMOUNT] in N evaluations | DURATION``: no improvement (by more
    than ``margin``, relative when ``relative``) for ``count`` readings or ``seconds``."""

    metric: str
    direction: str  # "better" (from the mode or the name), "lower" or "higher"
    margin: float = 0.0
    relative: bool = False
    count: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Spike:
    """``NAME z-score OP K over N readings``: the reading's distance from the mean of the
    ``window`` readings before it, in standard deviations."""

    metric: str
    op: str
    limit: float
    window: int


Condition = Threshold | Plateau | Spike


@dataclass(frozen=True)
class Action:
    """What a rule does when it fires: ``notify`` (at ``level``), ``checkpoint`` or ``stop``."""

    kind: str
    level: NotificationLevel = DEFAULT_LEVEL

    def __str__(self) -> str:
        return f"{NOTIFY} {self.level.value}" if self.kind == NOTIFY else self.kind


@dataclass(frozen=True)
class Rule:
    """One rule: its text as written, its condition and its actions (parse with :meth:`parse`)."""

    text: str
    condition: Condition
    actions: tuple[Action, ...]

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Read one rule.

        Raises:
            RuleError: the rule cannot be read (the message points at the column).
        """
        return _Parser(text).rule()

    @property
    def metric(self) -> str:
        """The name the rule reads."""
        return self.condition.metric

    @property
    def acts(self) -> bool:
        """Whether it can checkpoint or stop the run (under DDP the ranks then agree)."""
        return any(action.kind in (CHECKPOINT, STOP) for action in self.actions)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Rules:
    """The rules of a run, parsed once (:meth:`from_sources`); :meth:`watch` gives a started
    run the state that evaluates them."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_sources(
        cls,
        given: str | Iterable[str | Rule] | None,
        *,
        owner: str = "Rules",
        env: Mapping[str, str] | None = None,
    ) -> Rules:
        """The rules given in code (a list, or one ``;``-separated string) followed by
        those of ``AFS_RULES`` (``env``: default the environment over ``.env``); a rule
        written in both counts once.

        Raises:
            RuleError: a rule cannot be read; ``owner`` names the argument
                (``owner``: ``AFSNotify(rules[1])``) or the variable (``AFS_RULES rule 2``).
        """
        parsed: list[Rule] = []
        texts: list[str | Rule] = [*split_rules(given)] if isinstance(given, str) else list(given or [])
        for index, item in enumerate(texts):
            if isinstance(item, Rule):
                parsed.append(item)
                continue
            if not isinstance(item, str):
                raise RuleError(repr(item), 0, "a rule is a string", f"{owner}(rules[{index}])")
            try:
                parsed.append(Rule.parse(item))
            except RuleError as error:
                raise error.located(f"{owner}(rules[{index}])") from None
        environment = Env() if env is None else env
        for index, item in enumerate(split_rules(environment.get(ENV_VARIABLE) or "")):
            try:
                parsed.append(Rule.parse(item))
            except RuleError as error:
                raise error.located(f"{ENV_VARIABLE} rule {index + 1}") from None
        unique = {rule.text: rule for rule in reversed(parsed)}  # the first of equal texts
        return cls(tuple(rule for rule in parsed if unique.get(rule.text) is rule))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def acts(self) -> bool:
        """Whether any rule can checkpoint or stop the run."""
        return any(rule.acts for rule in self.rules)

    def watch(self, tracker: RunTracker, *, clock: Callable[[], float] = time.monotonic) -> RuleWatch:
        """Evaluate these rules on ``tracker``'s run (fresh state: each run starts armed);
        the tracker hands them what it processes from now on."""
        watch = RuleWatch(self.rules, tracker, clock=clock)
        tracker.use_rules(watch)
        return watch


def split_rules(text: str) -> list[str]:
    """``"a < 1; b > 2"`` → ``["a < 1", "b > 2"]`` (blank parts dropped)."""
    return [part.strip() for part in text.split(";") if part.strip()]


# Evaluation --------------------------------------------------------------------------------


@dataclass
class _State:
    """What one rule remembers of its metric between readings."""

    armed: bool = True
    best: float | None = None
    first: float | None = None
    held_since: float | None = None  # Threshold with ``for``: when it began to hold
    held_readings: int = 0
    improved_at: float | None = None  # Plateau: the clock at the last improvement
    since_improved: int = 0
    window: deque[float] = field(default_factory=deque)
    fired: int = 0


@dataclass(frozen=True)
class Firing:
    """A rule that fired: the rule, what it saw in words, where the run was."""

    rule: Rule
    detail: str
    value: float
    step: int
    epoch: int | None
    at: float  # wall time

    def entry(self) -> dict[str, Any]:
        """What the run's state keeps for its card (``control["rules"]``)."""
        return {
            "rule": self.rule.text,
            "detail": self.detail,
            "actions": [str(action) for action in self.rule.actions],
            "step": self.step,
            "at": self.at,
        }


class RuleWatch:
    """Evaluates a run's rules on what its tracker processes (see the module docstring).
    The tracker calls :meth:`observe` on the training thread (metrics, loss windows, the
    periodic look) and sometimes on the stall watchdog's: calls are serialised.

    Args:
        rules: the parsed rules.
        tracker: the run (started, global rank zero).
        clock: monotonic seconds (a test's clock).
    """

    def __init__(
        self, rules: Sequence[Rule], tracker: RunTracker, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rules = tuple(rules)
        self.tracker = tracker
        self._clock = clock
        self._states = [_State() for _ in self.rules]
        self._lock = threading.Lock()
        self._windows_seen = False  # once loss windows come in, "loss" means them
        self._seen: set[str] = set()
        self._metric_readings = 0
        self._warned: set[str] = set()
        self._fired: deque[Firing] = deque(maxlen=CARD_RULES)
        self.firings: list[Firing] = []

    def observe(self, values: Mapping[str, float], source: str, step: int, epoch: int | None) -> None:
        """Values the run just processed: ``source`` is ``metrics`` (an epoch's or an
        evaluation's), ``window`` (a loss window's mean, as ``loss``) or ``figures`` (the
        periodic look: ``elapsed``, ``step``, the monitors' figures)."""
        fired: list[Firing] = []
        with self._lock:
            if source == "window":
                self._windows_seen = True
            elif source == "metrics":
                if self._windows_seen and "loss" in values:
                    values = {name: value for name, value in values.items() if name != "loss"}
                self._seen.update(values)
                self._metric_readings += 1
                self._warn_unseen()
            now = self._clock()
            for rule, state in zip(self.rules, self._states, strict=True):
                value = values.get(rule.metric)
                if value is None or not math.isfinite(value):
                    continue  # NaN and Inf are the NaN detector's; they neither fire nor re-arm
                holds, detail = self._judge(rule, state, float(value), now)
                if holds and state.armed:
                    state.armed = False
                    state.fired += 1
                    firing = Firing(rule, detail, float(value), step, epoch, time.time())
                    self._fired.appendleft(firing)
                    self.firings.append(firing)
                    fired.append(firing)
                elif not holds:
                    state.armed = True
            entries = [firing.entry() for firing in self._fired] if fired else []
        if fired:  # outside the lock: asking records through the run's control
            self._publish(entries)
        for firing in fired:
            self._act(firing)

    # One reading of one rule --------------------------------------------------------------

    def _judge(self, rule: Rule, state: _State, value: float, now: float) -> tuple[bool, str]:
        """Take one reading: update the rule's memory, say whether the condition holds and
        what it saw."""
        condition = rule.condition
        higher = self._higher_is_better(condition)
        if state.first is None:
            state.first = value
        if isinstance(condition, Plateau):  # its best moves only by more than the margin
            return self._plateau(condition, state, value, higher, now)
        if state.best is None or (value > state.best if higher else value < state.best):
            state.best = value
        if isinstance(condition, Threshold):
            return self._threshold(condition, state, value, now)
        return self._spike(condition, state, value)

    def _threshold(self, c: Threshold, state: _State, value: float, now: float) -> tuple[bool, str]:
        limit = c.expr.value(state.best, state.first)
        if limit is None or not _COMPARE[c.op](value, limit):
            state.held_since, state.held_readings = None, 0
            return False, ""
        if state.held_since is None:
            state.held_since = now
        state.held_readings += 1
        if c.hold_seconds is not None and now - state.held_since < c.hold_seconds:
            return False, ""
        if c.hold_readings is not None and state.held_readings < c.hold_readings:
            return False, ""
        shown = _shown(c.metric, value)
        bound = _shown(c.metric, limit)
        detail = f"{c.metric} {shown} {c.op} {c.expr.text}"
        if c.expr.references:
            detail += f" = {bound} (best {_shown(c.metric, state.best)})"
        if c.hold_seconds is not None:
            detail += f" for {format_duration(now - state.held_since)}"
        elif c.hold_readings is not None:
            detail += f" for {state.held_readings} readings"
        return True, detail

    def _plateau(self, c: Plateau, state: _State, value: float, higher: bool, now: float) -> tuple[bool, str]:
        best = state.best
        margin = 0.0 if best is None else (c.margin * abs(best) if c.relative else c.margin)
        if best is None or (value > best + margin if higher else value < best - margin):
            state.best, state.improved_at, state.since_improved = value, now, 0
            return False, ""
        state.since_improved += 1
        by = ""
        if c.margin:
            by = f" by {format_value(c.margin * 100)}%" if c.relative else f" by {format_value(c.margin)}"
        if c.count is not None:
            if state.since_improved < c.count:
                return False, ""
            span = f"{state.since_improved} readings"
        else:
            waited = now - (state.improved_at if state.improved_at is not None else now)
            if c.seconds is None or waited < c.seconds:
                return False, ""
            span = format_duration(waited)
        return (
            True,
            f"{c.metric} no better than {format_value(best)}{by} for {span} (latest {format_value(value)})",
        )

    def _spike(self, c: Spike, state: _State, value: float) -> tuple[bool, str]:
        window = state.window
        holds, detail = False, ""
        if len(window) >= c.window:
            mean = sum(window) / len(window)
            std = math.sqrt(sum((x - mean) ** 2 for x in window) / (len(window) - 1))
            z = (
                (value - mean) / std
                if std > 0
                else (0.0 if value == mean else math.copysign(math.inf, value - mean))
            )
            holds = _COMPARE[c.op](z, c.limit)
            if holds:
                detail = (
                    f"{c.metric} {format_value(value)} is {format_value(z)} standard deviations from the mean"
                    f" {format_value(mean)} of the last {len(window)} readings"
                )
        window.append(value)
        while len(window) > c.window:
            window.popleft()
        return holds, detail

    def _higher_is_better(self, condition: Condition) -> bool:
        direction = condition.direction if isinstance(condition, Plateau) else "better"
        if direction != "better":
            return direction == "higher"
        config = self.tracker.config
        if config.monitor is not None and config.monitor == condition.metric:
            return config.mode == "max"
        return higher_is_better(condition.metric)

    def _warn_unseen(self) -> None:
        if self._metric_readings < UNSEEN_WARN_AFTER:
            return
        for rule in self.rules:
            name = rule.metric
            if name in self._seen or name in FIGURES or name == "loss" or name in self._warned:
                continue
            self._warned.add(name)
            close = difflib.get_close_matches(name, sorted(self._seen), n=1)
            hint = (
                f"; did you mean {close[0]}?" if close else f" (it logs {', '.join(sorted(self._seen)[:8])})"
            )
            log.warning(
                'afs-callbacks: rule "%s" reads %s, which this run has not logged%s', rule.text, name, hint
            )

    # Firing --------------------------------------------------------------------------------

    def _act(self, firing: Firing) -> None:
        tracker = self.tracker
        actor = f'rule "{firing.rule.text}"'
        where = f"{firing.detail} at step {firing.step:,}"
        for action in firing.rule.actions:
            try:
                if action.kind == NOTIFY:
                    self._notify(firing, action.level)
                else:
                    from afs_callbacks.control.run import ask  # beside: control's one path

                    ask(tracker, action.kind, reason=where, source="rule", actor=actor)
            except Exception:
                log.exception('afs-callbacks: rule "%s" could not %s', firing.rule.text, action.kind)

    def _notify(self, firing: Firing, level: NotificationLevel) -> None:
        tracker = self.tracker
        rule = firing.rule
        asks = [action.kind for action in rule.actions if action.kind != NOTIFY]
        text = messages.rule_fired(
            tracker.model_name, rule.text, firing.detail, firing.step, firing.epoch, asks
        )
        context: dict[str, Any] = {
            "model": tracker.model_name,
            "run_id": tracker.run_id,
            "rule": rule.text,
            "metric": rule.metric,
            "value": firing.value,
            "step": firing.step,
            "actions": [str(action) for action in rule.actions],
        }
        if firing.epoch is not None:
            context["epoch"] = firing.epoch
        index = self.rules.index(rule)
        event = NotificationEvent(
            EventType.RULE_FIRED,
            level,
            text.title,
            text.body,
            context,
            key=f"rule-{index}-{self._states[index].fired}",
        )
        sink = tracker.manager
        hand_over = getattr(sink, "post", None) or sink.emit  # post: admitted off this thread
        hand_over(event)

    def _publish(self, entries: list[dict[str, Any]]) -> None:
        """The card's list of rules that fired, through the run's control (the facts it
        publishes in the run's state)."""
        from afs_callbacks.control.run import attach

        control = attach(self.tracker)
        if control is not None:
            control.note_rules(entries)


def higher_is_better(name: str) -> bool:
    """Whether "better" means higher for a metric named ``name`` (accuracy, F1, AUC,
    BLEU, reward ...); any other name is taken for a loss."""
    return bool(_HIGHER_IS_BETTER.search(name.lower()))


def _shown(metric: str, value: float | None) -> str:
    if value is None:
        return "?"
    if metric == "elapsed":
        return format_duration(value)
    if metric in PERCENT_FIGURES:
        return f"{format_value(value)}%"
    return format_value(value)


# The parser --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<arrow>->|→)
  | (?P<op><=|>=|<|>|==|!=|=)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)(?P<unit>%|[a-zA-Z]+)?
  | (?P<name>[A-Za-z_](?:[A-Za-z0-9_./:]|-(?=[A-Za-z]))*)
  | (?P<punct>[-+*/(),])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # name, number, op, arrow, punct, end
    text: str
    column: int
    value: float = 0.0
    unit: str = ""


class _Parser:
    """A small recursive-descent reader of one rule (see the module docstring's grammar)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._lex(text)
        self.index = 0

    def rule(self) -> Rule:
        if not self.text.strip():
            raise self.error(self.peek(), "an empty rule; write a condition such as val_loss < 0.3")
        condition = self.condition()
        actions: tuple[Action, ...] = (Action(NOTIFY),)
        after = "'->' and actions"
        if self.peek().kind == "arrow":
            self.take()
            actions = self.actions()
            after = "',' and another action"
        end = self.peek()
        if end.kind != "end":
            raise self.error(end, f"unexpected {end.text!r}; expected {after}, or the end of the rule")
        return Rule(self.text.strip(), condition, actions)

    # Conditions --------------------------------------------------------------------------

    def condition(self) -> Condition:
        name = self.take()
        if name.kind != "name":
            raise self.error(
                name, "a rule starts with a metric's name (val_loss, loss, elapsed, gpu_util ...)"
            )
        if name.text in ("best", "first") or name.text.lower() in ACTIONS:
            raise self.error(name, f"{name.text!r} cannot be a rule's metric; start with a metric's name")
        word = self.peek()
        if word.kind == "name" and word.text.lower() == "no":
            return self.plateau(name)
        if word.kind == "name" and word.text.lower() in ("z-score", "zscore", "z"):
            return self.spike(name)
        op = self.take()
        if op.kind != "op":
            raise self.error(
                op, f"expected a comparison (<, <=, >, >=), 'no better' or 'z-score' after {name.text!r}"
            )
        if op.text not in _COMPARE:
            raise self.error(op, f"{op.text!r} is not a comparison here; use <, <=, > or >=")
        start = self.peek().column
        terms = tuple(self.expr(name.text))
        expr = Expr(terms, self.text[start : self.peek().column].strip())  # as written
        hold_seconds = hold_readings = None
        if self.peek().kind == "name" and self.peek().text.lower() == "for":
            self.take()
            amount = self.take()
            if amount.kind != "number":
                raise self.error(
                    amount, "expected how long after 'for': a duration (10m) or a count (3 readings)"
                )
            if amount.unit:
                hold_seconds = self.seconds(amount)
            else:
                hold_readings = self.count(amount, "readings")
        return Threshold(name.text, op.text, expr, hold_seconds, hold_readings)

    def plateau(self, name: _Token) -> Plateau:
        self.take()  # "no"
        direction = self.take()
        if direction.kind != "name" or direction.text.lower() not in ("better", "lower", "higher"):
            raise self.error(direction, "expected 'better', 'lower' or 'higher' after 'no'")
        margin, relative = 0.0, False
        if self.peek().kind == "name" and self.peek().text.lower() == "by":
            self.take()
            amount = self.take()
            if amount.kind != "number" or amount.unit not in ("", "%"):
                raise self.error(amount, "expected an amount after 'by': a percent (1%) or a number (0.01)")
            margin, relative = (amount.value / 100, True) if amount.unit == "%" else (amount.value, False)
        word = self.take()
        if word.kind != "name" or word.text.lower() != "in":
            raise self.error(word, "expected 'in' and how long: in 5 evaluations, in 2h")
        amount = self.take()
        if amount.kind != "number":
            raise self.error(
                amount, "expected how long after 'in': a count (5 evaluations) or a duration (2h)"
            )
        if amount.unit:
            return Plateau(name.text, direction.text.lower(), margin, relative, seconds=self.seconds(amount))
        return Plateau(
            name.text, direction.text.lower(), margin, relative, count=self.count(amount, "evaluations")
        )

    def spike(self, name: _Token) -> Spike:
        self.take()  # "z-score"
        op = self.take()
        if op.kind != "op" or op.text not in (">", "<", ">=", "<="):
            raise self.error(op, "expected > or < after 'z-score': loss z-score > 4 over 50 readings")
        sign = 1.0
        if self.peek().kind == "punct" and self.peek().text == "-":
            self.take()
            sign = -1.0
        limit = self.take()
        if limit.kind != "number" or limit.unit:
            raise self.error(limit, "expected a number of standard deviations (4)")
        word = self.take()
        if word.kind != "name" or word.text.lower() != "over":
            raise self.error(word, "expected 'over' and a window: over 50 readings")
        size = self.take()
        if size.kind != "number" or size.unit:
            raise self.error(size, "expected the number of readings the mean is taken over (50)")
        window = self.count(size, "readings")
        if window < 3:
            raise self.error(size, "a z-score needs a window of at least 3 readings")
        return Spike(name.text, op.text, sign * limit.value, window)

    # Right-hand sides --------------------------------------------------------------------

    def expr(self, metric: str) -> list[float | str]:
        out = self.term(metric)
        while self.peek().kind == "punct" and self.peek().text in "+-":
            op = self.take().text
            out += [*self.term(metric), op]
        return out

    def term(self, metric: str) -> list[float | str]:
        out = self.factor(metric)
        while self.peek().kind == "punct" and self.peek().text in "*/":
            op = self.take().text
            out += [*self.factor(metric), op]
        return out

    def factor(self, metric: str) -> list[float | str]:
        token = self.take()
        if token.kind == "punct" and token.text == "-":
            return [*self.factor(metric), "neg"]
        if token.kind == "punct" and token.text == "(":
            inner = self.expr(metric)
            close = self.take()
            if close.text != ")":
                raise self.error(close, "expected ')'")
            return inner
        if token.kind == "name" and token.text.lower() in ("best", "first"):
            return [token.text.lower()]
        if token.kind == "number":
            return [self.amount(token, metric)]
        found = "the end of the rule" if token.kind == "end" else repr(token.text)
        raise self.error(token, f"expected a number, best or first, found {found}")

    def amount(self, token: _Token, metric: str) -> float:
        unit = token.unit
        if not unit:
            return token.value
        if unit == "%":
            if metric not in PERCENT_FIGURES:
                raise self.error(
                    token,
                    f"a percent compares only {' and '.join(PERCENT_FIGURES)}; write {metric}'s value"
                    f" as it is logged (0.95, not 95%)",
                )
            return token.value
        if metric != "elapsed":
            raise self.error(token, f"a duration ({token.text}) compares only elapsed")
        return self.seconds(token)

    # Small readers -----------------------------------------------------------------------

    def actions(self) -> tuple[Action, ...]:
        actions: list[Action] = []
        while True:
            token = self.take()
            word = token.text.lower()
            if token.kind != "name" or word not in ACTIONS:
                raise self.error(token, "expected an action: notify [level], checkpoint or stop")
            action = Action(word)
            following = self.peek()
            if word == NOTIFY and following.kind == "name" and following.text.lower() != "and":
                if following.text.lower() in ACTIONS:
                    raise self.error(following, f"separate actions with ',': notify, {following.text}")
                level = self.take()
                try:
                    action = Action(NOTIFY, NotificationLevel.parse(level.text))
                except ValueError:
                    names = ", ".join(item.value for item in NotificationLevel)
                    raise self.error(level, f"unknown level {level.text!r}; use one of {names}") from None
            if any(existing.kind == action.kind for existing in actions):
                raise self.error(token, f"{word} is named twice")
            actions.append(action)
            separator = self.peek()
            if (separator.kind == "punct" and separator.text == ",") or (
                separator.kind == "name" and separator.text.lower() == "and"
            ):
                self.take()
                continue
            return tuple(sorted(actions, key=lambda a: ACTIONS.index(a.kind)))

    def seconds(self, token: _Token) -> float:
        factor = _UNITS.get(token.unit.lower())
        if factor is None:
            raise self.error(token, f"unknown unit {token.unit!r}; use s, m, h or d (10m, 6h)")
        if token.value <= 0:
            raise self.error(token, "a duration must be more than 0")
        return token.value * factor

    def count(self, token: _Token, noun: str) -> int:
        if token.value != int(token.value) or token.value < 1:
            raise self.error(token, f"expected a whole number of {noun} (1 or more)")
        word = self.peek()
        if word.kind == "name" and word.text.lower() in _COUNT_WORDS:
            self.take()
        else:
            raise self.error(word, f"expected what to count after {token.text}: {noun}")
        return int(token.value)

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def error(self, token: _Token, problem: str) -> RuleError:
        return RuleError(self.text, token.column, problem)

    def _lex(self, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise RuleError(text, position, f"unexpected character {text[position]!r}")
            kind = match.lastgroup if match.lastgroup != "unit" else "number"
            if match.group("number") is not None:
                tokens.append(
                    _Token(
                        "number",
                        match.group(0),
                        position,
                        float(match.group("number")),
                        match.group("unit") or "",
                    )
                )
            elif kind != "space":
                tokens.append(_Token(str(kind), match.group(0), position))
            position = match.end()
        tokens.append(_Token("end", "", len(text.rstrip())))
        return tokens


__all__ = [
    "ACTIONS",
    "ENV_VARIABLE",
    "FIGURES",
    "Action",
    "Firing",
    "Plateau",
    "Rule",
    "RuleError",
    "RuleWatch",
    "Rules",
    "Spike",
    "Threshold",
    "higher_is_better",
    "split_rules",
]
