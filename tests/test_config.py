"""Configuration: environment over .env, typed getters with clear errors, URL policy, Settings."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from afs_callbacks import ConfigurationError, EventType, NotificationLevel, Settings
from afs_callbacks.channels.variables import unknown_variables
from afs_callbacks.config import (
    Env,
    channel_settings,
    default_state_dir,
    is_loopback,
    open_env,
    read_settings,
    validate_url,
)

SECRET_URL = "https://hooks.slack.com/services/T0SECRET/B0SECRET/sEcReTtOkEn123"


def env_of(**values: str) -> Env:
    return Env(values, env_file=False)


def test_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    dotenv = tmp_path / "custom.env"
    dotenv.write_text("AFS_DEDUP_WINDOW=5\nAFS_MAX_ATTEMPTS=3\nEMPTY_IN_FILE=\n")
    env = Env({"AFS_DEDUP_WINDOW": "7"}, env_file=dotenv)
    assert env["AFS_DEDUP_WINDOW"] == "7"
    assert env["AFS_MAX_ATTEMPTS"] == "3"
    assert env.env_file == dotenv


def test_dot_env_in_the_working_directory_is_read_by_default(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AFS_RETRY_BASE=0.5\n")  # the fixture made tmp_path the cwd
    assert Env({}).number("AFS_RETRY_BASE") == 0.5
    assert "AFS_RETRY_BASE" not in Env({}, env_file=False)


def test_afs_env_file_names_the_file_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    named = tmp_path / "job.env"
    named.write_text("AFS_MAX_ATTEMPTS=4\n")
    assert Env({"AFS_ENV_FILE": str(named)}).integer("AFS_MAX_ATTEMPTS") == 4
    with pytest.raises(ConfigurationError, match="AFS_ENV_FILE: no such file"):
        Env({"AFS_ENV_FILE": str(tmp_path / "missing.env")})


def test_env_repr_shows_no_values() -> None:
    env = env_of(SLACK_WEBHOOK_URL=SECRET_URL)
    assert "sEcReT" not in repr(env) and "1 variables" in repr(env)


@pytest.mark.parametrize(
    ("method", "value", "expected"),
    [
        ("text", "  hello ", "hello"),
        ("text", "   ", None),
        ("flag", "yes", True),
        ("flag", "OFF", False),
        ("flag", "", False),
        ("number", "2.5", 2.5),
        ("number", "1e3", 1000.0),
        ("integer", "42", 42),
        ("port", "587", 587),
        ("items_list", " a, ,b ,c", ["a", "b", "c"]),
        ("level", "Warning", NotificationLevel.WARNING),
        ("event_types", "nan_detected, OUT_OF_MEMORY", {EventType.NAN_DETECTED, EventType.OUT_OF_MEMORY}),
    ],
)
def test_typed_getters_read_good_values(method: str, value: str, expected: object) -> None:
    assert getattr(env_of(X_VAR=value), method)("X_VAR") == expected


def test_unset_variables_give_the_default() -> None:
    env = env_of()
    assert env.text("X", "d") == "d"
    assert env.flag("X", True) is True
    assert env.number("X", 1.5) == 1.5
    assert env.integer("X", 3) == 3
    assert env.port("X", 25) == 25
    assert env.items_list("X") == []
    assert env.level("X", NotificationLevel.ERROR) is NotificationLevel.ERROR
    assert env.event_types("X") is None
    assert env.url("X") is None


@pytest.mark.parametrize(
    ("method", "value", "kwargs", "problem"),
    [
        ("flag", "maybe", {}, "must be true or false, got 'maybe'"),
        ("number", "fast", {}, "must be a number, got 'fast'"),
        ("number", "nan", {}, "must be a number, got NaN"),
        ("number", "-1", {"minimum": 0}, "must be at least 0, got -1"),
        ("number", "2", {"maximum": 1}, "must be at most 1, got 2"),
        ("integer", "2.5", {}, "must be a whole number, got '2.5'"),
        ("integer", "0", {"minimum": 1}, "must be at least 1, got 0"),
        ("port", "99999", {}, "must be a port number 1-65535, got '99999'"),
        ("port", "smtp", {}, "must be a port number 1-65535, got 'smtp'"),
        ("port", "0", {}, "must be a port number 1-65535"),
        ("level", "loud", {}, "unknown level 'loud'"),
        ("event_types", "nan_detected,meteor", {}, "unknown event type 'meteor'"),
    ],
)
def test_typed_getters_name_the_variable_and_the_problem(
    method: str, value: str, kwargs: dict[str, float], problem: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        getattr(env_of(MY_SETTING=value), method)("MY_SETTING", **kwargs)
    assert caught.value.variable == "MY_SETTING"
    assert str(caught.value).startswith("MY_SETTING: ")
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still work


@pytest.mark.parametrize(
    "url",
    [
        "hooks.slack.com/services/T0SECRET/B0SECRET/sEcReTtOkEn123",  # no scheme
        "ftp://hooks.slack.com/services/T0SECRET/B0SECRET/sEcReTtOkEn123",  # wrong scheme
        "https://hooks.slack.com:99x/services/T0SECRET/B0SECRET/sEcReTtOkEn123",  # bad port
        "http://hooks.slack.com/services/T0SECRET/B0SECRET/sEcReTtOkEn123",  # http to a remote host
        "https://user:sEcReTtOkEn123@/services/T0SECRET",  # no host
    ],
)
def test_bad_url_errors_never_echo_the_secret(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        env_of(SLACK_WEBHOOK_URL=url).url("SLACK_WEBHOOK_URL")
    assert str(caught.value).startswith("SLACK_WEBHOOK_URL: ")
    shown = "".join(traceback.format_exception(caught.value))  # what a user would see, chain included
    assert "sEcReT" not in shown and "T0SECRET" not in shown


def test_plain_http_is_refused_for_remote_hosts_with_a_way_out() -> None:
    with pytest.raises(ConfigurationError, match="use https, or set AFS_ALLOW_HTTP=1"):
        validate_url("http://relay.example.com/hook", "WEBHOOK_URL")
    assert validate_url("http://relay.example.com/hook", "WEBHOOK_URL", allow_http=True)
    assert env_of(WEBHOOK_URL="http://relay.example.com/h", AFS_ALLOW_HTTP="1").url("WEBHOOK_URL")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "http://localhost/x", "http://[::1]:9093/api", "http://127.3.2.1/"]
)
def test_plain_http_is_allowed_for_loopback(url: str) -> None:
    assert validate_url(url, "WEBHOOK_URL") == url


def test_https_is_always_fine_and_non_secret_urls_are_shown() -> None:
    assert validate_url(SECRET_URL, "SLACK_WEBHOOK_URL") == SECRET_URL
    with pytest.raises(ConfigurationError, match=r"got ftp://example\.com/feed"):
        validate_url("ftp://example.com/feed", "FEED_URL", secret=False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST", True), ("127.0.0.1", True), ("::1", True), ("[::1]", True),
     ("10.0.0.1", False), ("example.com", False), ("127.0.0.1.nip.io", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_default_state_dir_follows_afs_state_dir_then_xdg(tmp_path: Path) -> None:
    assert default_state_dir({"AFS_STATE_DIR": str(tmp_path / "s")}) == tmp_path / "s"
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "afs-callbacks"
    assert default_state_dir({}).parts[-3:] == (".local", "state", "afs-callbacks")


def test_settings_from_env_reads_every_option(tmp_path: Path) -> None:
    settings = Settings.from_env(
        env_of(
            AFS_STATE_DIR=str(tmp_path),
            AFS_STRICT="1",
            AFS_DEDUP_WINDOW="30",
            AFS_MAX_ATTEMPTS="5",
            AFS_RETRY_BASE="0.5",
            AFS_RETRY_CAP="60",
            AFS_MAX_RETRY_AFTER="120",
            AFS_EXIT_FLUSH_TIMEOUT="2",
            AFS_HISTORY_DAYS="7",
            AFS_HISTORY_MAX_EVENTS="500",
            AFS_CONSOLE="Always",
            AFS_SEND_TIMEOUT="3",
        )
    )
    assert settings == Settings(
        state_dir=tmp_path,
        strict=True,
        dedup_window=30.0,
        max_attempts=5,
        retry_base=0.5,
        retry_cap=60.0,
        max_retry_after=120.0,
        exit_flush_timeout=2.0,
        retention_days=7.0,
        max_history=500,
        console="always",
        send_timeout=3.0,
    )


def test_settings_defaults(tmp_path: Path) -> None:
    assert Settings.from_env(env_of(AFS_STATE_DIR=str(tmp_path))) == Settings(state_dir=tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("AFS_DEDUP_WINDOW", "soon", "must be a number"),
        ("AFS_MAX_ATTEMPTS", "0", "must be at least 1"),
        ("AFS_CONSOLE", "loud", "must be auto, always or never"),
        ("AFS_SEND_TIMEOUT", "0", "must be at least 0.1"),
        ("AFS_STRICT", "perhaps", "must be true or false"),
    ],
)
def test_settings_bad_value_raises_without_on_error(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}: {problem}"):
        Settings.from_env(env_of(**{variable: value}))


def test_settings_on_error_keeps_the_default_for_that_option_only(tmp_path: Path) -> None:
    seen: list[ConfigurationError] = []
    settings = Settings.from_env(
        env_of(AFS_STATE_DIR=str(tmp_path), AFS_DEDUP_WINDOW="soon", AFS_MAX_ATTEMPTS="3"),
        on_error=seen.append,
    )
    assert [error.variable for error in seen] == ["AFS_DEDUP_WINDOW"]
    assert settings.dedup_window == 60.0  # the default
    assert settings.max_attempts == 3  # the good value next to it is kept


# One strict/lenient policy ---------------------------------------------------------------


def test_read_settings_lenient_keeps_defaults_and_warns_once_per_bad_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Values no other test uses: the once-per-process memory is shared by the whole run.
    env = env_of(AFS_SEND_TIMEOUT="0.001", AFS_ALLOW_HTTP="perhaps", AFS_RETRY_BASE="0.5")

    first = read_settings(env, strict=False)
    again = read_settings(env, strict=False)

    assert (first.send_timeout, first.allow_http, first.retry_base) == (10.0, False, 0.5)
    assert again == first
    assert caplog.text.count("AFS_SEND_TIMEOUT") == 1 and caplog.text.count("AFS_ALLOW_HTTP") == 1


def test_read_settings_strict_raises_on_the_first_bad_value() -> None:
    with pytest.raises(ConfigurationError, match="AFS_ALLOW_HTTP"):
        read_settings(env_of(AFS_ALLOW_HTTP="maybe"), strict=True)
    with pytest.raises(ConfigurationError, match="AFS_SEND_TIMEOUT"):
        read_settings(env_of(AFS_SEND_TIMEOUT="0", AFS_STRICT="1"))  # strict from AFS_STRICT


def test_read_settings_reports_to_on_error_when_given() -> None:
    seen: list[str] = []
    settings = read_settings(
        env_of(AFS_MAX_AGE="-1"), strict=False, on_error=lambda e: seen.append(e.variable)
    )
    assert settings.max_age == 86400.0 and seen == ["AFS_MAX_AGE"]


def test_the_channel_budget_is_read_and_zero_turns_it_off(tmp_path: Path) -> None:
    from afs_callbacks.delivery.lifecycle import budget_policy

    default = Settings.from_env(env_of(AFS_STATE_DIR=str(tmp_path)))
    assert (default.burst, default.pace) == (20, 10.0)
    assert budget_policy(default) is not None and budget_policy(default).burst == 20  # type: ignore[union-attr]
    tuned = Settings.from_env(env_of(AFS_STATE_DIR=str(tmp_path), AFS_BURST="5", AFS_PACE="0.5"))
    assert (tuned.burst, tuned.pace) == (5, 0.5)
    assert budget_policy(Settings.from_env(env_of(AFS_BURST="0"))) is None
    seen: list[str] = []
    bad = Settings.from_env(
        env_of(AFS_BURST="-1", AFS_PACE="soon"), on_error=lambda e: seen.append(e.variable)
    )
    assert (bad.burst, bad.pace) == (20, 10.0) and seen == ["AFS_BURST", "AFS_PACE"]


def test_open_env_skips_a_missing_afs_env_file_unless_strict(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.env")
    env = open_env({"AFS_ENV_FILE": missing, "X": "1"}, None, False)
    assert env.env_file is None and env["X"] == "1"
    with pytest.raises(ConfigurationError, match="AFS_ENV_FILE"):
        open_env({"AFS_ENV_FILE": missing}, None, True)
    with pytest.raises(ConfigurationError, match="AFS_ENV_FILE"):
        open_env({"AFS_ENV_FILE": missing, "AFS_STRICT": "yes"}, None, None)


def test_open_env_raises_for_a_file_the_caller_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such file"):
        open_env({}, tmp_path / "named.env", False)


def test_env_remembers_which_names_came_from_the_file(tmp_path: Path) -> None:
    dotenv = tmp_path / "vars.env"
    dotenv.write_text("SLAK_WEBHOOK_URL=x\nAFS_RETRY_BASE=1\n")
    env = Env({"AFS_RETRY_BASE": "2", "HOME": "/root"}, env_file=dotenv)
    assert env.file_names == {"SLAK_WEBHOOK_URL", "AFS_RETRY_BASE"}


def test_a_bad_allow_http_does_not_break_url_reading() -> None:
    env = env_of(WEBHOOK_URL="https://relay.example.com/h", AFS_ALLOW_HTTP="maybe")
    assert env.url("WEBHOOK_URL") == "https://relay.example.com/h"
    with pytest.raises(ConfigurationError, match="plain http"):
        env_of(WEBHOOK_URL="http://relay.example.com/h", AFS_ALLOW_HTTP="maybe").url("WEBHOOK_URL")


def test_channel_settings_prefers_the_callers_settings(tmp_path: Path) -> None:
    given = Settings(state_dir=tmp_path, send_timeout=3.0, allow_http=True)
    assert channel_settings(env_of(AFS_SEND_TIMEOUT="5"), given) is given
    assert channel_settings(env_of(AFS_SEND_TIMEOUT="5")).send_timeout == 5.0
    assert channel_settings(env_of(AFS_SEND_TIMEOUT="nope")).send_timeout == 10.0


def test_unknown_variables_that_look_like_ours_get_the_likely_name() -> None:
    env = {
        "SLAK_WEBHOOK_URL": "x",
        "SMTP_SERVER": "y",
        "AFS_NOPE": "z",
        "SLACK_HOOK": "w",
        "SLACK_WEBHOOK_URL": "fine",
        "COST_ALERT_THRESHOLD_3": "100",
        "PATH": "/bin",
        "DESKTOP_SESSION": "gnome",
    }

    found = {item.name: item.suggestion for item in unknown_variables(env, from_file={"SLACK_HOOK"})}

    assert found == {
        "SLAK_WEBHOOK_URL": "SLACK_WEBHOOK_URL",
        "SMTP_SERVER": "SMTP_HOST",
        "AFS_NOPE": None,
        "SLACK_HOOK": None,
    }
