"""What someone outside the training loop asks of a run: stop, or save a checkpoint now.

A person (``afs-notify stop``, the dashboard, a chat button) or a rule asks through
:meth:`RunTracker.ask <afs_callbacks.tracking.tracker.RunTracker.ask>`; the tracker holds
the :class:`Ask` and the step hook's return value tells the adapter to look. The adapter
takes what waits with ``tracker.asked()`` (an :class:`Asked`) at the framework's next safe
point, acts (Lightning ``trainer.should_stop`` / ``save_checkpoint``, HF
``control.should_training_stop`` / ``should_save``, Keras ``model.stop_training`` and a
save, ``RunNotifier.should_stop`` / ``checkpoint_requested``) and says how it went with
``tracker.answered(...)``. The tracker knows nothing of where an ask came from beyond its
words: commands, stores and chats are :mod:`afs_callbacks.control`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STOP = "stop"
CHECKPOINT = "checkpoint"
#: How far an ask got, in the words of the commands table's states
#: (``afs_callbacks.delivery.outbox``): taken by the adapter, carried out, refused.
ACCEPTED = "accepted"
DONE = "done"
REFUSED = "refused"
#: What a run can be asked to do (``status`` is answered from the store: the run does nothing).
ACTIONS = (STOP, CHECKPOINT)


@dataclass(frozen=True)
class Ask:
    """One request: ``action`` (:data:`STOP` or :data:`CHECKPOINT`), who asked and why.

    Attributes:
        action: what is asked.
        source: the surface (``cli``, ``dashboard``, ``telegram``, ``slack``, ``rule``).
        actor: who, in words (``alice@gpu-7``, ``rule "loss > 3 * best"``).
        reason: why, when the asker says (a rule's condition); may be empty.
        command_id: the stored command it answers, if any.
    """

    action: str
    source: str
    actor: str
    reason: str = ""
    command_id: str | None = None

    @property
    def words(self) -> str:
        """``stopped by alice@gpu-7 via cli`` (the end reason of a stop); a rule's:
        ``stopped by rule "loss > 3 * best -> stop": loss 2.41 > ...`` (its actor names it)."""
        done = "stopped" if self.action == STOP else "checkpoint asked"
        via = "" if self.source == "rule" else f" via {self.source}"
        text = f"{done} by {self.actor}{via}"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True)
class Asked:
    """What waits for the adapter: a stop, a checkpoint, or both (then save, then stop)."""

    stop: Ask | None = None
    checkpoint: Ask | None = None

    def __bool__(self) -> bool:
        return self.stop is not None or self.checkpoint is not None

    @property
    def save(self) -> Ask | None:
        """The ask a checkpoint answers: an explicit one, else the stop (which saves where
        the run has a checkpointer)."""
        return self.checkpoint or self.stop


#: How an adapter's answer reaches whoever listens (the run's control): the ask, the
#: command state it reached (``accepted``, ``done``, ``refused``) and the detail in words.
Listener = Callable[[Ask, str, str], None]

__all__ = ["ACCEPTED", "ACTIONS", "CHECKPOINT", "DONE", "REFUSED", "STOP", "Ask", "Asked", "Listener"]
