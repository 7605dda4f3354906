"""docs/troubleshooting.md quotes only lines the library can print.

A person searches that page for the line in their terminal; a quoted line the code no longer
prints (issue #22: "cannot open the outbox ... Set AFS_STATE_DIR") sends them nowhere.

- Every ``afs-callbacks: ...`` and ``afs-notify: ...`` line in the page's fenced blocks must
  be matched, whole, by one of the texts in ``afs_callbacks/`` (string literals and
  f-strings, their ``%s``/``{...}`` holes standing for any text; a doc's ``<reason>`` is a
  hole too), or by a text whose hole is filled by another (``"%s %s"`` around ``f"gave up
  after {age} and {n} attempts: {detail}"``). The text that matches must carry enough fixed
  wording to say something (``"%s: %s"`` alone matches anything).
- The history-database section's line is produced for real (a state directory the library
  cannot create) and must read as quoted, up to the path.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from pathlib import Path

import pytest

from afs_callbacks.config import Env
from afs_callbacks.manager import NotificationManager

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "troubleshooting.md"
PREFIXES = ("afs-callbacks: ", "afs-notify: ")
#: Fixed characters a code text needs to stand for a quoted line (``"%s: %s"`` says nothing).
MIN_WORDING = 14
_HOLE = re.compile(r"%(?:\(\w+\))?[-+ #0]*\d*(?:\.\d+)?[sdrfgixX]")
_DOC_HOLE = re.compile(r"<[a-z][a-z ]*>")


def quoted_lines() -> list[str]:
    """The library's lines quoted in the page's fenced blocks (not shell commands)."""
    lines, fenced = [], False
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced and line.startswith(PREFIXES):
            lines.append(line)
    return lines


def _pattern(parts: list[str | None]) -> tuple[re.Pattern[str], int]:
    """A regex for a text whose ``None`` parts are holes (each a group), and its count of
    fixed characters."""
    regex, fixed = "", 0
    for part in parts:
        if part is None:
            regex += "(.+?)"
            continue
        for index, piece in enumerate(_HOLE.split(part.replace("%%", "\0"))):
            if index:
                regex += "(.+?)"
            regex += re.escape(piece.replace("\0", "%"))
            fixed += len(piece)
    return re.compile(regex, re.DOTALL), fixed


@functools.lru_cache(maxsize=1)
def code_texts() -> tuple[tuple[re.Pattern[str], int], ...]:
    """Every string literal and f-string in the package, as a pattern and its fixed
    characters (with its prefix stripped: the page's line is matched after its own)."""
    patterns = []
    for path in sorted((REPO / "afs_callbacks").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            parts: list[str | None]
            if isinstance(node, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = [node.value]
            else:
                continue
            if isinstance(parts[0], str):
                for prefix in PREFIXES:
                    if parts[0].startswith(prefix):
                        parts[0] = parts[0].removeprefix(prefix)
            patterns.append(_pattern(parts))
    return tuple(patterns)


def can_produce(line: str, patterns: tuple[tuple[re.Pattern[str], int], ...]) -> bool:
    """Whether ``line`` is a text of the code, or a text whose hole holds another."""
    text = line.removeprefix(PREFIXES[0]).removeprefix(PREFIXES[1])
    text = _DOC_HOLE.sub("<hole>", text)
    wordy = [pattern for pattern, fixed in patterns if fixed >= MIN_WORDING]
    if any(pattern.fullmatch(text) for pattern in wordy):
        return True
    for pattern, _ in patterns:
        match = pattern.fullmatch(text) if pattern.groups else None
        if match and any(inner.fullmatch(hole) for hole in match.groups() for inner in wordy):
            return True
    return False


def test_the_page_quotes_lines() -> None:
    # The test below proves nothing if the page's blocks stopped being found.
    assert len(quoted_lines()) >= 8, quoted_lines()


@pytest.mark.parametrize("line", quoted_lines())
def test_each_quoted_line_is_one_the_code_can_print(line: str) -> None:
    assert can_produce(line, code_texts()), f"docs/troubleshooting.md quotes a line no code prints: {line}"


def test_a_retired_line_is_not_taken_for_a_current_one() -> None:
    # The line issue #22 found in the page: it must not pass for one the code prints.
    retired = (
        "afs-callbacks: cannot open the outbox at /home/me/.local/state/afs-callbacks/outbox.sqlite3"
        " (unable to open database file); messages are kept in memory only and are lost if this"
        " process dies. Set AFS_STATE_DIR."
    )
    assert not can_produce(retired, code_texts())


def test_the_history_database_line_reads_as_quoted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file where the state directory should be: the library cannot create the history
    (as root, a read-only folder is writable; a file in the way fails for everyone)."""
    (tmp_path / "in-the-way").write_text("not a folder")
    state = tmp_path / "in-the-way" / "state"
    caplog.set_level(logging.WARNING, logger="afs_callbacks")
    manager = NotificationManager.from_env(
        Env({"AFS_STATE_DIR": str(state), "AFS_CONSOLE": "never"}, env_file=False)
    )
    try:
        manager.notify("run started", "a line for the history")
        manager.flush(5)
    finally:
        manager.close(timeout=2)
    printed = [
        r.getMessage() for r in caplog.records if "cannot open the notification history" in r.getMessage()
    ]
    assert printed, [r.getMessage() for r in caplog.records]
    quoted = next(line for line in quoted_lines() if "cannot open the notification history" in line)
    assert normalized(printed[0]) == normalized(quoted), (quoted, printed[0])


def normalized(line: str) -> str:
    """The line with its path and its cause (which differ from machine to machine) left out."""
    return re.sub(r"history \S+/outbox\.sqlite3: .+?\. Messages", "history PATH: CAUSE. Messages", line)
