"""Destination URLs: each service's documented shape, one unambiguous parse for the
plain-http check and the sender, and what ``afs-notify status`` / ``test`` say about them."""

from __future__ import annotations

import json
import logging

import pytest

from afs_callbacks.channels import REGISTRY, build_channel, channel_classes
from afs_callbacks.channels.apprise import AppriseNotifier
from afs_callbacks.channels.hosts import url_warnings
from afs_callbacks.config import Env, validate_url
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.testing import LoopbackReceiver
from tests.cli.helpers import afs_notify, cli_env

SLACK_SECRET = "xYz1234567890SecretPart00"
DISCORD_TOKEN = "Tok3n_abcdefghijklmnopqrstuvwxyz-0123456789"
TEAMS_SIG = "S1gnatureS3cretValue0123456789"


def build(name: str, **variables: str) -> object:
    return build_channel(name, Env(variables, env_file=False))


@pytest.mark.parametrize(
    ("name", "variable", "url", "wanted"),
    [
        ("slack", "SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000", "3 parts"),
        ("slack", "SLACK_WEBHOOK_URL", f"https://hooks.slack.com/T000/B000/{SLACK_SECRET}", "no /services/"),
        (
            "slack",
            "SLACK_WEBHOOK_URL",
            f"https://hooks.slak.com/services/T0/B0/{SLACK_SECRET}",
            "hooks.slack.com",
        ),
        ("slack", "SLACK_WEBHOOK_URL", f"https://hooks.slack.com/services/T0/B0 /{SLACK_SECRET}", "a space"),
        (
            "slack",
            "SLACK_WEBHOOK_URL",
            f"https://discord.com/services/T0/B0/{SLACK_SECRET}",
            "another service",
        ),
        (
            "discord",
            "DISCORD_WEBHOOK_URL",
            f"https://discord.com/api/webhooks/abc/{DISCORD_TOKEN}",
            "a number",
        ),
        (
            "discord",
            "DISCORD_WEBHOOK_URL",
            "https://discord.com/api/webhooks/123456789012345678",
            "webhook URL",
        ),
        ("discord", "DISCORD_WEBHOOK_URL", "https://discord.com/api/webhooks/123456789012345678/x", "token"),
        (
            "discord",
            "DISCORD_WEBHOOK_URL",
            f"https://dicsord.com/api/webhooks/1/{DISCORD_TOKEN}",
            "did you mean",
        ),
        (
            "teams",
            "TEAMS_WEBHOOK_URL",
            "https://prod-00.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=1",
            "sig=",
        ),
        (
            "teams",
            "TEAMS_WEBHOOK_URL",
            f"https://prod-00.westus.logic.azure.com/nothing?sig={TEAMS_SIG}",
            "Workflows",
        ),
    ],
)
def test_malformed_service_urls_are_refused_without_showing_the_secret(
    name: str, variable: str, url: str, wanted: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build(name, **{variable: url})

    assert caught.value.variable == variable and wanted in str(caught.value)
    for secret in (SLACK_SECRET, DISCORD_TOKEN, TEAMS_SIG):
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "variable", "url"),
    [
        ("slack", "SLACK_WEBHOOK_URL", f"https://hooks.slack.com/services/T0AB12/B0CD34/{SLACK_SECRET}"),
        (
            "discord",
            "DISCORD_WEBHOOK_URL",
            f"https://discord.com/api/webhooks/123456789012345678/{DISCORD_TOKEN}",
        ),
        (
            "discord",
            "DISCORD_WEBHOOK_URL",
            f"https://canary.discordapp.com/api/v10/webhooks/1234567/{DISCORD_TOKEN}",
        ),
        (
            "teams",
            "TEAMS_WEBHOOK_URL",
            "https://prod-00.westus.logic.azure.com:443/workflows/0a1b/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}",
        ),
    ],
)
def test_documented_shapes_are_accepted(name: str, variable: str, url: str) -> None:
    assert build(name, **{variable: url}) is not None
    assert variable not in url_warnings()


def test_an_unexpected_host_where_relays_are_normal_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "afs_callbacks")
    relay = build("slack", SLACK_WEBHOOK_URL="https://relay.corp.example/slack/hook")
    ntfy = build("ntfy", NTFY_URL="https://ntfy.hs", NTFY_TOPIC="runs-7Hq2xPz9")

    assert relay is not None and ntfy is not None
    assert "relay.corp.example" in url_warnings()["SLACK_WEBHOOK_URL"]
    assert "ntfy.sh" in url_warnings()["NTFY_URL"]
    assert "misspelling of 'ntfy.sh'" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com\\@127.0.0.1/hook",
        "http://example.com\\\\@127.0.0.1:8080/hook",
        "http://user@example.com@127.0.0.1/hook",
        "http://127.0.0.1\\.example.com/hook",
        "http://127.0.0.1/ho ok",
        "http://127.0.0.1/hook\r\nX-Injected: 1",
        "http://exa%6dple.com/hook",
    ],
)
def test_ambiguous_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_url(url, "WEBHOOK_URL")
    assert caught.value.variable == "WEBHOOK_URL"


def test_the_sender_uses_the_url_the_check_parsed(receiver: LoopbackReceiver) -> None:
    checked = validate_url(receiver.url("/hook?a=1"), "WEBHOOK_URL")
    channel = build("webhook", WEBHOOK_URL=receiver.url("/hook?a=1"))

    assert checked == receiver.url("/hook?a=1")
    assert getattr(channel, "url", None) == checked


@pytest.mark.parametrize(
    "url",
    ["json://user:pw@hooks.example.org/afs", "xml://hooks.example.org/afs", "form://10.0.0.8:8080/hook"],
)
def test_apprise_plain_http_to_a_remote_host_needs_afs_allow_http(url: str) -> None:
    pytest.importorskip("apprise")
    with pytest.raises(ConfigurationError, match="AFS_ALLOW_HTTP"):
        build("apprise", APPRISE_URLS=url)
    assert isinstance(build("apprise", APPRISE_URLS=url, AFS_ALLOW_HTTP="1"), AppriseNotifier)
    assert isinstance(build("apprise", APPRISE_URLS=url.replace("://", "s://", 1)), AppriseNotifier)


def test_bad_core_values_keep_their_defaults_and_the_http_channels(receiver: LoopbackReceiver) -> None:
    env = Env(
        {"WEBHOOK_URL": receiver.url("/hook"), "AFS_SEND_TIMEOUT": "0", "AFS_ALLOW_HTTP": "maybe"},
        env_file=False,
    )
    channel = build_channel("webhook", env)

    assert channel is not None and getattr(channel, "timeout", None) == 10.0


def test_status_names_misspelt_variables_and_unexpected_hosts() -> None:
    env = cli_env(
        SLAK_WEBHOOK_URL="https://hooks.slack.com/services/T0/B0/x",
        AFS_STATEDIR="/tmp",
        SLACK_WEBHOOK_URL=f"https://relay.corp.example/slack/{SLACK_SECRET}",
    )
    text = afs_notify("status", env=env)
    result = afs_notify("status", "--json", env=env)

    assert "warning: SLAK_WEBHOOK_URL is unknown: did you mean SLACK_WEBHOOK_URL?" in text.stdout
    warnings = json.loads(result.stdout)["warnings"]
    assert "AFS_STATEDIR is unknown: did you mean AFS_STATE_DIR?" in warnings
    assert any(w.startswith("SLACK_WEBHOOK_URL: 'relay.corp.example' is not Slack's host") for w in warnings)
    assert SLACK_SECRET not in text.stdout + result.stdout + result.stderr


def test_status_shows_a_broken_url_as_a_config_error_not_ready() -> None:
    env = cli_env(SLACK_WEBHOOK_URL=f"https://hooks.slack.com/services/T0/{SLACK_SECRET}")
    result = afs_notify("status", env=env)

    line = next(line for line in result.stdout.splitlines() if line.startswith("slack"))
    assert result.returncode == 2 and "config error" in line and "3 parts" in line
    assert SLACK_SECRET not in result.stdout + result.stderr


def test_test_says_which_channel_failed_and_why() -> None:
    env = cli_env(DISCORD_WEBHOOK_URL=f"https://discord.com/api/webhooks/not-a-number/{DISCORD_TOKEN}")
    result = afs_notify("test", env=env)

    assert result.returncode == 2
    assert "The discord channel could not be set up" in result.stdout
    assert "must be a number" in result.stdout and "copy .env.example" not in result.stdout.lower()
    assert DISCORD_TOKEN not in result.stdout + result.stderr


def test_every_registered_channel_has_a_doc_page() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "channels"
    missing = [name for name in REGISTRY if name != "console" and not (docs / f"{name}.md").is_file()]
    assert missing == []


@pytest.mark.parametrize(
    ("url", "shape"),
    [
        (
            f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SLACK_SECRET}",
            "https://hooks.slack.com/services/T…/B…/…",
        ),
        (
            f"https://discord.com/api/webhooks/123456789/{DISCORD_TOKEN}",
            "https://discord.com/api/webhooks/…/…",
        ),
        (
            f"https://x.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig={TEAMS_SIG}",
            "https://x.logic.azure.com:443/workflows/…/triggers/manual/paths/invoke?api-version=…&sig=…",
        ),
        (
            f"https://afs:{SLACK_SECRET}@relay.example.org/hook/{SLACK_SECRET}#frag",
            "https://…@relay.example.org/hook/…#…",
        ),
        (f"hooks.slack.com/services/T0123ABCD/B0456EFGH/{SLACK_SECRET}", "hooks.slack.com/services/T…/B…/…"),
        (f"https://ex ample.org/{SLACK_SECRET}", "https://…/…"),
    ],
)
def test_url_shape_keeps_only_the_parts_that_are_no_secret(url: str, shape: str) -> None:
    from afs_callbacks.urls import url_shape

    assert url_shape(url) == shape
    assert SLACK_SECRET not in shape and DISCORD_TOKEN not in shape and TEAMS_SIG not in shape


def test_redaction_leaves_a_shape_as_it_is_and_still_masks_the_url() -> None:
    """A refused URL's shape goes through the log filter like any line: masking it again
    would turn ``T…/B…/…`` back into ``***`` and hide what was wrong."""
    from afs_callbacks.redaction import redact

    channel_classes()  # each service's patterns are declared by its channel class
    line = "SLACK_WEBHOOK_URL: has no https:// in front: got hooks.slack.com/services/T…/B…/…, expected x"
    assert redact(line) == line
    real = f"got https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SLACK_SECRET}, expected x"
    assert SLACK_SECRET not in redact(real) and "***" in redact(real)
    # An ellipsis next to a secret does not shield it.
    mixed = f"https://hooks.slack.com/services/T…/B…/{SLACK_SECRET}"
    assert SLACK_SECRET not in redact(mixed)
