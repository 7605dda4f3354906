"""A small org.freedesktop.Notifications server for the desktop tests, on a real D-Bus bus.

Run as ``python desktop_dbus_server.py RECORD [CAPABILITIES] [ADDRESS]``: it owns the name,
answers Notify (with a new id), GetCapabilities, GetServerInformation and
CloseNotification, appends each Notify call to RECORD as a JSON line *before* replying (so
a caller that got its reply can read the record at once), and prints ``ready`` once it owns
the name. Given the capability ``mute`` it owns the name and never answers (a hung server).
ADDRESS defaults to the bus that started it (D-Bus activation) or the session bus.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from jeepney import HeaderFields, Message, MessageType, new_error, new_method_call, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

NAME = "org.freedesktop.Notifications"
DO_NOT_QUEUE = 4
PRIMARY_OWNER = 1


def main() -> None:
    record = sys.argv[1]
    capabilities = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else []
    address = (
        sys.argv[3]
        if len(sys.argv) > 3
        else os.environ.get("DBUS_STARTER_ADDRESS") or os.environ["DBUS_SESSION_BUS_ADDRESS"]
    )
    connection = open_dbus_connection(bus=address)
    # Not send_and_get_reply: it drops whatever arrives before the reply, and a bus that
    # started this server on demand delivers the waiting call as soon as the name is ours.
    serial = next(connection.outgoing_serial)
    connection.send(new_method_call(message_bus, "RequestName", "su", (NAME, DO_NOT_QUEUE)), serial=serial)
    early: list[Message] = []
    while True:
        message = connection.receive()
        if message.header.fields.get(HeaderFields.reply_serial) == serial:
            break
        early.append(message)
    if message.body[0] != PRIMARY_OWNER:
        raise SystemExit(f"could not own {NAME}: {message.body}")
    print("ready", flush=True)
    with contextlib.suppress(ConnectionError, OSError):  # the bus went away: the test is over
        serve(connection, record, capabilities, early)


def serve(connection: DBusConnection, record: str, capabilities: list[str], early: list[Message]) -> None:
    """Answer the calls that came early, then every call until the bus goes away."""
    next_id = 1
    while True:
        message = early.pop(0) if early else connection.receive()
        if message.header.message_type != MessageType.method_call:
            continue
        member = message.header.fields.get(HeaderFields.member)
        if "mute" in capabilities:
            continue  # a hung server: owns the name, never answers
        if member == "Notify":
            app_name, replaces_id, icon, summary, body, actions, hints, expire = message.body
            call = {
                "app_name": app_name,
                "replaces_id": replaces_id,
                "icon": icon,
                "summary": summary,
                "body": body,
                "actions": actions,
                # Variants arrive as (signature, value): keep both to check the types.
                "hints": {key: value for key, (_, value) in hints.items()},
                "hint_types": {key: signature for key, (signature, _) in hints.items()},
                "expire_timeout": expire,
            }
            with open(record, "a", encoding="utf-8") as out:
                out.write(json.dumps(call) + "\n")
            connection.send(new_method_return(message, "u", (next_id,)))
            next_id += 1
        elif member == "GetCapabilities":
            connection.send(new_method_return(message, "as", (capabilities,)))
        elif member == "GetServerInformation":
            connection.send(new_method_return(message, "ssss", ("afs-test-server", "afs", "1.0", "1.2")))
        elif member == "CloseNotification":
            connection.send(new_method_return(message))
        else:
            connection.send(
                new_error(message, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"no method {member}",))
            )


if __name__ == "__main__":
    main()
