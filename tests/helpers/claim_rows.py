"""Child process for the outbox tests: claim rows of one channel until none are left.

Usage: python claim_rows.py DB_PATH CHANNEL GO_FILE
Waits until GO_FILE exists (so two children start together), then claims one or two rows at
a time, marks each delivered, and prints the claimed event ids as one JSON list.
"""

from __future__ import annotations

import json
import os
import sys
import time

from afs_callbacks.delivery.outbox import Outbox


def main() -> None:
    path, channel, go_file = sys.argv[1:4]
    outbox = Outbox(path)
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file) and time.monotonic() < deadline:
        time.sleep(0.001)
    claimed: list[str] = []
    limit = 1 + os.getpid() % 2
    while True:
        claims = outbox.claim(channel, lease_seconds=60, limit=limit)
        if not claims:
            break
        for claim in claims:
            claimed.append(claim.event.id)
            outbox.mark_delivered(claim.event.id, channel)
    print(json.dumps(claimed))


if __name__ == "__main__":
    main()
