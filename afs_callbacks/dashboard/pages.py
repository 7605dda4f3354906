"""The HTML the server writes itself: the page shell the script fills, and the error page.

The shell carries no data, only the CSRF token (in a meta tag the script reads) so that
every number on screen comes from the JSON API and updates live. The error page needs no
script: a missing or unreadable store is explained in plain HTML naming the file.
"""

from __future__ import annotations

from html import escape

from afs_callbacks import __version__

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
"""

_NAV = """<header class="top">
<a class="brand" href="/">afs-callbacks</a>
<nav><a href="/" data-nav="runs">Runs</a><a href="/outbox" data-nav="outbox">Outbox</a></nav>
<span class="store" title="{store}">{store}</span>
<span id="live" class="live" title="updates every second">live</span>
</header>
"""


def shell(*, csrf: str, store: str) -> str:
    """The single page every route serves; ``app.js`` renders runs, a run or the outbox."""
    return (
        _HEAD.format(title="Training runs · afs-callbacks")
        + f'<meta name="afs-csrf" content="{escape(csrf)}">\n'
        + '<script src="/static/chart.js" defer></script>\n'
        + '<script src="/static/app.js" defer></script>\n'
        + "</head>\n<body>\n"
        + _NAV.format(store=escape(store))
        + '<main id="main"><p class="muted">Loading…</p></main>\n'
        + f'<footer>afs-callbacks {escape(__version__)} · <a href="/api/runs">JSON</a></footer>\n'
        + "</body>\n</html>\n"
    )


def error_page(*, title: str, detail: str, path: str, hint: str) -> str:
    """A plain page that says what is wrong with which file and what to do."""
    return (
        _HEAD.format(title=escape(title))
        + "</head>\n<body>\n"
        + _NAV.format(store=escape(path))
        + '<main id="main" class="problem">\n'
        + f"<h1>{escape(title)}</h1>\n"
        + f"<p>{escape(detail)}</p>\n"
        + f'<p>File: <code id="store-path">{escape(path)}</code></p>\n'
        + f"<p>{escape(hint)}</p>\n"
        + "<p>This page checks again when you reload it.</p>\n"
        + "</main>\n</body>\n</html>\n"
    )


def unauthorized_page() -> str:
    """What a request without the dashboard's token gets (401)."""
    return (
        _HEAD.format(title="Token required")
        + '</head>\n<body>\n<main id="main" class="problem">\n<h1>Token required</h1>\n'
        + "<p>This dashboard is reachable from other machines, so it asks for the token"
        " <code>afs-notify dashboard</code> printed. Open the URL it printed (it ends in"
        " <code>?token=…</code>) or send <code>Authorization: Bearer TOKEN</code>.</p>\n"
        + "</main>\n</body>\n</html>\n"
    )
