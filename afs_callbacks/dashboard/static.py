"""The dashboard's own static files (script, chart renderer, style), shipped in the package.

Only the names listed here are served, so no request path can reach another file.
Nothing comes from a CDN: the dashboard works on a machine with no internet.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

#: File name -> Content-Type.
FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@cache
def read(name: str) -> tuple[bytes, str] | None:
    """``(bytes, content type)`` of a shipped file, or None for any other name."""
    content_type = FILES.get(name)
    if content_type is None:
        return None
    return (
        resources.files("afs_callbacks.dashboard").joinpath("assets").joinpath(name).read_bytes(),
        content_type,
    )
