"""MIME building for the email channel: the whole message, its HTML part and footer.

Kept apart from :mod:`afs_callbacks.channels.email` so that module holds the SMTP side
(connecting, TLS, login, classifying failures) and this one only turns an event into an
:class:`~email.message.EmailMessage`; nothing here touches the network.

Each message is ``multipart/alternative``: plain text, then HTML (every piece of run text
HTML-escaped) inside ``multipart/related`` with charts as inline ``cid:`` images. The
Message-ID comes from the event id, so a retried message is recognisably the same one.
"""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from afs_callbacks.formatting import context_fields, format_value, level_hex, plain_text, truncate

if TYPE_CHECKING:
    from afs_callbacks.events import NotificationEvent

SUBJECT_CHARS = 200
# A traceback can be long; mail servers refuse huge messages and nobody reads past this.
BODY_CHARS = 100_000


def build_message(
    event: NotificationEvent, sender: str, sender_address: str, recipients: tuple[str, ...]
) -> EmailMessage:
    """The whole message: headers, text and HTML alternatives, charts inline."""
    message = EmailMessage()
    # Header values may not hold line breaks (they would start new headers).
    title = " ".join(event.title.split()) or event.event_type.value
    message["Subject"] = truncate(f"[{event.level.value.upper()}] {title}", SUBJECT_CHARS)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(event.timestamp)
    domain = sender_address.rpartition("@")[2]
    message["Message-ID"] = f"<{event.id}.afs@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message["X-AFS-Event"] = event.event_type.value
    # Quoted-printable keeps the message 7-bit clean for relays without 8BITMIME.
    message.set_content(truncate(plain_text(event), BODY_CHARS) + footer(event), cte="quoted-printable")
    images = [a for a in event.attachments if a.content_type.startswith("image/")]
    cids = [make_msgid(domain=domain) for _ in images]
    page = html_body(event, [cid[1:-1] for cid in cids])
    message.add_alternative(page, subtype="html", cte="quoted-printable")
    # The HTML alternative becomes multipart/related once an image is added to it.
    html_part = message.get_body(("html",))
    assert html_part is not None  # just added
    for attachment, cid in zip(images, cids, strict=True):
        maintype, _, subtype = attachment.content_type.partition("/")
        html_part.add_related(attachment.data, maintype, subtype, cid=cid, filename=attachment.filename)
    for attachment in event.attachments:
        if attachment not in images:
            maintype, _, subtype = attachment.content_type.partition("/")
            message.add_attachment(
                attachment.data, maintype, subtype or "octet-stream", filename=attachment.filename
            )
    return message


def html_body(event: NotificationEvent, image_cids: list[str]) -> str:
    """The HTML alternative; every piece of run text is escaped."""
    esc = html.escape
    color = level_hex(event.level)
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{esc(label)}</th><td>{esc(value)}</td></tr>'
        for label, value in context_fields(event)
    )
    metrics = "".join(
        f'<tr><td style="padding:2px 12px 2px 0">{esc(str(name))}</td>'
        f'<td style="font-family:monospace">{esc(format_value(value))}</td></tr>'
        for name, value in event.metrics.items()
    )
    parts = [
        f'<div style="font-family:sans-serif;border-left:6px solid {color};padding-left:12px">',
        f'<p style="color:{color};font-weight:bold;margin:0">{esc(event.level.value.upper())}'
        f" · {esc(event.event_type.value)}</p>",
        f'<h2 style="margin:4px 0 12px 0">{esc(event.title)}</h2>',
    ]
    if event.message:
        message = truncate(event.message, BODY_CHARS)
        parts.append(f'<pre style="white-space:pre-wrap;font-family:monospace">{esc(message)}</pre>')
    if rows:
        parts.append(f"<table>{rows}</table>")
    if metrics:
        parts.append(f"<h3>Metrics</h3><table>{metrics}</table>")
    parts += [f'<p><img src="cid:{esc(cid)}" alt="chart" style="max-width:100%"></p>' for cid in image_cids]
    parts.append(f'<p style="color:#6b7280;font-size:small">{esc(footer(event).strip())}</p></div>')
    return "<!DOCTYPE html><html><body>" + "\n".join(parts) + "</body></html>"


def footer(event: NotificationEvent) -> str:
    """The plain-text signature: where and when the event came from, and its id."""
    host = event.context.get("host")
    where = f" on {host}" if host else ""
    return f"\n\n-- \nafs-callbacks{where}, {event.timestamp:%Y-%m-%d %H:%M:%S} UTC, event {event.id}"
