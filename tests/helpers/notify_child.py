"""Child process for the durability tests: a "training script" that notifies and then dies.

Usage: python notify_child.py STATE_DIR URL COUNT MODE
Notifies COUNT events to a hook channel at URL, prints their ids as one JSON line, then:
``hold`` waits to be killed (SIGKILL from the test); ``exit`` returns normally, leaving the
exit-time flush to deliver.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests folder, for `helpers`

from helpers.hook import HookChannel, manager_for


def main() -> None:
    state_dir, url, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    # Retries far apart: whatever the child has not delivered stays pending in the outbox.
    manager = manager_for(state_dir, {"hook": HookChannel(url)}, retry_base=1000.0, retry_cap=1000.0)
    ids = []
    for index in range(count):
        event = manager.notify(f"event {index}", "from a child process", run_id="child")
        assert event is not None
        ids.append(event.id)
    print(json.dumps(ids), flush=True)
    if mode == "hold":
        threading.Event().wait()


if __name__ == "__main__":
    main()
