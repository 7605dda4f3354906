"""The README cannot drift: its code blocks run here, as a user would run them after install.

- Every fenced ``python`` block runs in a fresh interpreter, in an empty folder, with the
  test's own state directory; what it reported must then be in the history.
- Every fenced ``bash`` block runs with ``bash -eu`` in a folder holding what a checkout
  holds that the block uses (``examples/``, ``.env.example``), with this interpreter's
  ``python`` and ``afs-notify`` first on ``PATH``. The user's step "set one destination in
  .env" is played by a ``.env.example`` whose copy points the generic webhook at a loopback
  receiver. Each block must exit 0 and leave events in the history.
- The install and test commands themselves are not run here (:data:`NOT_RUN` says why);
  a block that mixes them with other commands fails, so the rest is always run.
- A block that is a fragment of the user's own script is marked in the README with
  ``<!-- not run: fragment ... -->`` on the line above; that stays rare (:data:`MAX_FRAGMENTS`).
- Every relative link in the README and docs/ points at a file that exists, and
  docs/integrations.md lists every argument the adapters take.

The examples/ scripts are run by tests/test_examples.py.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.integrations._base import NotifierBase
from afs_callbacks.integrations.loop import RunNotifier
from afs_callbacks.testing import LoopbackReceiver

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

#: Command prefixes the README shows but these tests do not run, and why.
NOT_RUN = {
    "bash scripts/install.sh": "installs apt packages and this package: .ci/run runs it on a fresh machine",
    "python -m pytest": "is this test suite",
    "pip install": "installs the package: .ci/run installs the built wheel in a clean venv and imports it",
    "python -m build": "builds the wheel and sdist: .ci/run does",
}
#: How many blocks may be marked as fragments (keep it rare: a fragment is not checked).
MAX_FRAGMENTS = 1
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
_NOT_RUN_MARK = re.compile(r"<!--\s*not run:\s*(.*?)-->")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    language: str
    code: str
    line: int
    mark: str | None  # the reason of a ``<!-- not run: ... -->`` on the line above

    @property
    def commands(self) -> list[str]:
        """The shell command lines (not comments, not blank)."""
        lines = (line.split(" #")[0].strip() for line in self.code.splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    @property
    def installs(self) -> bool:
        """Whether every command is one that :data:`NOT_RUN` leaves out."""
        return all(command.startswith(tuple(NOT_RUN)) for command in self.commands)

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` with their language, first line and not-run mark."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _NOT_RUN_MARK.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), match.group(2), line, mark.group(1).strip() if mark else None))
    return found


README_BLOCKS = [b for b in blocks(README) if b.language in ("python", "bash")]
RUN_PYTHON = [b for b in README_BLOCKS if b.language == "python" and b.mark is None]
RUN_BASH = [b for b in README_BLOCKS if b.language == "bash" and b.mark is None and not b.installs]


def events_in_history(state_dir: Path) -> list[str]:
    """Event types in the history under ``state_dir`` (what ``afs-notify history`` shows)."""
    if not (state_dir / "outbox.sqlite3").exists():
        return []
    outbox = Outbox(state_dir / "outbox.sqlite3")
    try:
        return [entry.event.event_type.value for entry in outbox.history(limit=500)]
    finally:
        outbox.close()


def user_env(**variables: str) -> dict[str, str]:
    """The test's isolated environment, with this interpreter's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DESKTOP_NOTIFICATIONS_ENABLED"] = "false"  # a CI box with D-Bus must not add a channel
    env.update(variables)
    return env


def test_the_readme_has_runnable_blocks_and_few_fragments() -> None:
    fragments = [b for b in README_BLOCKS if b.mark is not None]
    assert len(fragments) <= MAX_FRAGMENTS, [str(b) for b in fragments]
    assert RUN_PYTHON and RUN_BASH
    # The quickstart path the README promises is among what runs.
    assert any("python examples/lightning_example.py" in b.commands for b in RUN_BASH)
    assert any("afs-notify history" in b.commands for b in RUN_BASH)


def test_install_commands_are_in_blocks_of_their_own() -> None:
    for block in README_BLOCKS:
        skipped = [c for c in block.commands if c.startswith(tuple(NOT_RUN))]
        assert not skipped or block.installs, f"{block}: put {skipped} in a block of their own"


@pytest.mark.parametrize("block", RUN_PYTHON, ids=str)
def test_a_readme_python_block_runs(block: Block, tmp_path: Path, isolated_env: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=user_env(), stdin=subprocess.DEVNULL,
    )  # fmt: skip

    assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert events_in_history(isolated_env), f"{block} left nothing in the history"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BASH, ids=str)
def test_a_readme_bash_block_runs(block: Block, tmp_path: Path, isolated_env: Path) -> None:
    for framework in ("lightning", "transformers", "keras"):
        if f"examples/{framework}_example.py" in block.code:
            pytest.importorskip(framework)  # tox's core environment has no ML framework
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    with LoopbackReceiver() as receiver:
        # The user's edit after `cp .env.example .env`: one destination set.
        example = (REPO / ".env.example").read_text(encoding="utf-8")
        (work / ".env.example").write_text(
            f"{example}\nWEBHOOK_URL={receiver.url('/mine')}\n", encoding="utf-8"
        )
        result = subprocess.run(
            ["bash", "-eu", "-o", "pipefail", "-c", block.code],
            capture_output=True, text=True, timeout=300, cwd=work, env=user_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip

        assert result.returncode == 0, f"{block}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        kinds = events_in_history(isolated_env)
        assert kinds, f"{block} left nothing in the history"
        if "afs-notify test" in block.commands:
            assert any(r.path == "/mine" for r in receiver.requests), "the test message reached the channel"
    if "afs-notify history" in block.commands:
        assert "training_completed" in kinds and "training_completed" in result.stdout


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize(
    "page", [README, *sorted((REPO / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(REPO))
)
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    found = _LINK.findall(page.read_text(encoding="utf-8"))
    # Paths only: not URLs, not a placeholder such as `[text](url)` in a code span.
    links = [link for link in found if "://" not in link and ("/" in link or "." in link)]
    missing = [link for link in links if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing {missing}"


def test_the_argument_reference_lists_every_argument_of_every_adapter() -> None:
    page = (REPO / "docs" / "integrations.md").read_text(encoding="utf-8")
    shared = [name for name in inspect.signature(NotifierBase.__init__).parameters if name != "self"]
    assert shared and all(f"| `{name}` |" in page for name in shared), [
        name for name in shared if f"| `{name}` |" not in page
    ]
    loop_only = set(inspect.signature(RunNotifier.__init__).parameters) - set(shared) - {"self", "options"}
    assert all(f"`{name}`" in page for name in loop_only), loop_only
    for method in ("step", "epoch", "evaluation", "checkpoint", "stop"):
        assert f"run.{method}(" in page, method
