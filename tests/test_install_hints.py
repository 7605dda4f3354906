"""Hints that fit the install (afs_callbacks/_install.py): from this checkout they name the
checkout (``pip install -e '<repo>[keras]'``, ``<repo>/docs/...``); from the built wheel,
installed alone in a clean virtual environment, the extras' own requirements (the package is
not on an index, so ``pip install 'afs-callbacks[keras]'`` cannot work) and the docs and
``.env.example`` the wheel installs under ``<venv>/share/doc/afs-callbacks/``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from afs_callbacks._install import current, docs_page, env_example, install_hint

REPO = Path(__file__).resolve().parent.parent
#: What the core needs at run time (pyproject's dependencies and what requests brings).
CORE = ("requests", "urllib3", "idna", "certifi", "charset_normalizer", "dotenv", "psutil")


def test_from_this_checkout_the_hints_name_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests run from the working tree, however the package is also installed.
    assert current().kind == "checkout"
    assert install_hint("keras") == f"pip install -e '{REPO}[keras]'"
    assert docs_page("troubleshooting.md") == str(REPO / "docs" / "troubleshooting.md")
    assert env_example() == str(REPO / ".env.example")
    monkeypatch.chdir(REPO)
    assert install_hint("keras") == "pip install -e '.[keras]'"
    assert docs_page("channels/slack.md") == "docs/channels/slack.md"


#: This checkout on PYTHONPATH would make pip think the package is already installed.
CLEAN = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def install_alone(root: Path, target: str) -> tuple[Path, dict[str, str]]:
    """A fresh venv under ``root`` with ``target`` (a wheel file or a folder) installed and
    nothing else; the core dependencies are lent from this environment (no network), the
    extras are absent. Returns the venv and the environment to run in it with."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--no-build-isolation", target], check=True, timeout=300, capture_output=True, env=CLEAN
    )
    assert (venv / "bin" / "afs-notify").is_file()
    lent = root / "core"
    lent.mkdir()
    for name in CORE:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        (lent / name).symlink_to(Path(spec.origin).parent)
    env = {key: value for key, value in CLEAN.items() if not key.startswith("PYTEST")}
    env.update(PYTHONPATH=str(lent), KERAS_BACKEND="torch", DESKTOP_NOTIFICATIONS_ENABLED="false")
    return venv, env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The wheel built from this checkout, installed alone in a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        env=CLEAN,
    )
    [wheel] = dist.glob("afs_callbacks-*.whl")
    yield install_alone(root, str(wheel))


def in_venv(
    venv: Path, env: dict[str, str], cwd: Path, *command: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        env={**env, **extra},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_from_the_wheel_a_missing_extra_names_its_own_requirements(
    wheel_venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = wheel_venv
    keras = in_venv(venv, env, tmp_path, "python", "-c", "import afs_callbacks.integrations.keras")
    assert keras.returncode == 1
    assert keras.stderr.splitlines()[-1] == (
        "ImportError: afs_callbacks.integrations.keras needs Keras 3 and a backend: pip install 'keras>=3.0'"
        " and torch, jax or tensorflow (set KERAS_BACKEND=torch|jax|tensorflow before importing keras)"
    )
    apprise = in_venv(
        venv,
        env,
        tmp_path,
        "python",
        "-c",
        "from afs_callbacks.channels.apprise import AppriseNotifier as A; A(['json://127.0.0.1/x'])",
    )
    assert apprise.stderr.splitlines()[-1] == (
        "afs_callbacks.exceptions.MissingExtraError: The Apprise channel needs the 'apprise' extra:"
        " pip install 'apprise>=1.6'"
    )
    assert "afs-callbacks[" not in keras.stderr + apprise.stderr


@pytest.mark.slow
def test_from_the_wheel_test_points_at_files_the_install_has(
    wheel_venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = wheel_venv
    result = in_venv(venv, env, tmp_path, "afs-notify", "test", AFS_STATE_DIR=str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr
    docs = venv / "share" / "doc" / "afs-callbacks"
    assert result.stdout.splitlines()[-1] == (
        f"No channel is configured yet, so the test went to the console only. Copy {docs / '.env.example'}"
        " to .env, set one destination (e.g. SLACK_WEBHOOK_URL or NTFY_TOPIC)"
        " and run `afs-notify test` again;"
        f" {docs / 'configuration.md'} lists every setting."
    )
    assert (docs / ".env.example").read_text() == (REPO / ".env.example").read_text()
    assert (docs / "configuration.md").is_file() and (docs / "channels" / "slack.md").is_file()
    status = in_venv(venv, env, tmp_path, "afs-notify", "status", AFS_STATE_DIR=str(tmp_path / "state"))
    slack = next(line for line in status.stdout.splitlines() if line.startswith("slack"))
    assert slack.endswith(f"none of its settings are present (see {docs / 'channels' / 'slack.md'})")
    helped = in_venv(venv, env, tmp_path, "afs-notify", "--help")
    assert (
        f"Settings come from the environment and ./.env (see {docs / 'configuration.md'})." in helped.stdout
    )


@pytest.mark.slow
def test_from_a_folder_install_the_hints_name_the_folder(tmp_path: Path) -> None:
    """``pip install ./afs-callbacks`` (not editable): the folder is still there to install
    an extra from. pip installs it into a folder of its own (``--target``: the same build
    and the same ``direct_url.json`` as into a venv, with this interpreter's setuptools)."""
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(target), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
        env=CLEAN,
    )
    code = "from afs_callbacks._install import current, install_hint as h; print(current().kind, h('keras'))"
    env = {**CLEAN, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == f"folder pip install '{REPO}[keras]'", result.stderr
