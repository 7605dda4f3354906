"""Slack as a control surface: the card's buttons, and the handler that turns a Socket Mode
interactive payload (``block_actions``, as Slack documents it) into a command.

Not covered here: the websocket itself. A loopback Socket Mode server would need a
websocket server playing ``apps.connections.open`` and Slack's envelopes; the connection
is ``slack_sdk``'s own ``SocketModeClient``, and what this package adds is the listener
that acknowledges the envelope and calls :func:`handle_interaction`, tested here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.slack import card_message
from afs_callbacks.control import ControlPolicy
from afs_callbacks.control.slack import handle_interaction
from afs_callbacks.delivery.outbox import Outbox
from tests.control.test_commands import stored_run

ON = ControlPolicy(surfaces=("slack",), slack_users=frozenset({"U111"}))


@pytest.fixture
def store(tmp_path: Path) -> Outbox:
    store = Outbox(tmp_path / "outbox.sqlite3")
    stored_run(store, "run-1", control={"accepts": ["slack"]})
    return store


def click(action_id: str, value: str, *, user: str = "U111", channel: str = "C999") -> dict[str, Any]:
    """A block_actions payload as Socket Mode delivers it (``payload`` of the envelope)."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "alice"},
        "channel": {"id": channel, "name": "training"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": channel},
        "actions": [{"action_id": action_id, "block_id": "afs_control", "value": value, "type": "button"}],
    }


def test_the_card_carries_buttons_while_the_run_takes_slack_commands(store: Outbox) -> None:
    state = store.run("run-1")
    assert state is not None
    blocks = card_message(state)["blocks"]
    actions = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == ["afs_stop", "afs_checkpoint", "afs_status"]
    assert all(e["value"] == "run-1" for e in actions[0]["elements"])
    ended = dataclasses.replace(state, status="completed")
    assert not [b for b in card_message(ended)["blocks"] if b["type"] == "actions"]


def test_a_stop_click_asks_then_the_askers_yes_queues_it(store: Outbox) -> None:
    posted: list[tuple[str, str, Any, Any]] = []
    post = lambda *args: posted.append(args)  # noqa: E731
    answer = handle_interaction(
        click("afs_stop", "run-1"), store=store, policy=ON, channels=("C999",), post=post
    )
    assert answer == "Confirm in the thread."
    channel, question, blocks, thread = posted[0]
    assert (channel, thread) == ("C999", "1700000000.000100") and question.startswith("Stop run run-1")
    yes = blocks[1]["elements"][0]
    assert yes["action_id"] == "afs_confirm"
    [command] = store.commands()
    assert command.state == "unconfirmed" and command.actor == "slack user U111 (alice)"
    someone = handle_interaction(
        click("afs_confirm", yes["value"], user="U222"), store=store, policy=ON, channels=("C999",), post=post
    )
    assert "not in AFS_CONTROL_SLACK_USERS" in someone
    done = handle_interaction(
        click("afs_confirm", yes["value"]), store=store, policy=ON, channels=("C999",), post=post
    )
    assert done == "Stopping at the run's next step."
    assert store.command(command.id).state == "pending"  # type: ignore[union-attr]


def test_a_click_in_another_channel_is_refused_and_kept(store: Outbox) -> None:
    answer = handle_interaction(
        click("afs_checkpoint", "run-1", channel="C000"),
        store=store,
        policy=ON,
        channels=("C999",),
        post=lambda *a: None,
    )
    assert answer.startswith("Refused: channel C000 is not the configured channel")
    assert [(c.action, c.state) for c in store.commands()] == [("checkpoint", "refused")]


def test_the_cards_own_channel_counts_as_the_configured_one(store: Outbox) -> None:
    store.save_card_id("run-1", "slack", "C999:1700000000.000100")  # SLACK_CHANNEL was "#training"
    answer = handle_interaction(
        click("afs_checkpoint", "run-1"),
        store=store,
        policy=ON,
        channels=("#training", "training"),
        post=lambda *a: None,
    )
    assert answer == "Checkpoint asked: the run saves at its next step."
