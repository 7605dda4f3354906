"""A notification server honouring ``replaces_id``, as the freedesktop spec says: a Notify
with a non-zero ``replaces_id`` of a shown notification replaces it and returns that id;
``CloseNotification`` closes one (recorded as ``{"closed": id}``) and answers empty.

Run as ``python dbus_server.py RECORD ADDRESS``: owns org.freedesktop.Notifications on the
bus at ADDRESS, appends each Notify call to RECORD (JSON lines) before replying, prints
``ready`` once it owns the name.
"""

from __future__ import annotations

import contextlib
import json
import sys

from jeepney import HeaderFields, MessageType, new_method_call, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NAME = "org.freedesktop.Notifications"


def main() -> None:
    record, address = sys.argv[1], sys.argv[2]
    connection = open_dbus_connection(bus=address)
    reply = connection.send_and_get_reply(new_method_call(message_bus, "RequestName", "su", (NAME, 4)))
    if reply.body[0] != 1:
        raise SystemExit(f"could not own {NAME}")
    print("ready", flush=True)
    shown: set[int] = set()
    next_id = 1
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            message = connection.receive()
            if message.header.message_type != MessageType.method_call:
                continue
            member = message.header.fields.get(HeaderFields.member)
            if member == "GetCapabilities":
                connection.send(new_method_return(message, "as", (["body"],)))
            elif member == "Notify":
                _app, replaces_id, _icon, summary, body, _actions, hints, _expire = message.body
                number = replaces_id if replaces_id in shown else next_id
                if number == next_id:
                    next_id += 1
                shown.add(number)
                call = {"replaces_id": replaces_id, "id": number, "summary": summary, "body": body}
                call["hints"] = {key: value for key, (_, value) in hints.items()}
                with open(record, "a", encoding="utf-8") as out:
                    out.write(json.dumps(call) + "\n")
                connection.send(new_method_return(message, "u", (number,)))
            elif member == "CloseNotification":
                (number,) = message.body
                shown.discard(number)
                with open(record, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"closed": number}) + "\n")
                connection.send(new_method_return(message))


if __name__ == "__main__":
    main()
