"""``python -m afs_callbacks``: the afs-notify command."""

from __future__ import annotations

from afs_callbacks.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
