"""Run control: stop a run, save a checkpoint now, or ask how it is doing, from outside.

The pieces, each in its module:

* :mod:`.policy` — who may command (``AFS_CONTROL``, the chat allow-lists, the age past
  which a command is ignored);
* :mod:`.commands` — the one path every surface takes to ask a run something: checked,
  stored in the ``commands`` table (accepted or refused, with who, from where and when),
  confirmed where a stop asks for it;
* :mod:`.run` — the run's side: :class:`~.run.RunControl` reads its commands off the
  training thread (piggy-backed on the senders' once-a-second look at the store) and
  hands them to the tracker, which the adapter honours at its next step; :func:`~.run.ask`
  is the seam rules use to stop or checkpoint a run;
* :mod:`.telegram` and :mod:`.slack` — the chat surfaces: a ``getUpdates`` long poll and
  Slack's Socket Mode, one per host, with buttons under the live card.

The threat model is in docs/control.md.
"""

from __future__ import annotations

from afs_callbacks.control.commands import cancel, confirm, issue
from afs_callbacks.control.policy import ControlPolicy
from afs_callbacks.control.run import RunControl, ask, attach

__all__ = ["ControlPolicy", "RunControl", "ask", "attach", "cancel", "confirm", "issue"]
