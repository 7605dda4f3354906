"""How this copy of afs-callbacks was installed, and the hints that work for that install.

A hint must be one a person can run where they are. ``pip install 'afs-callbacks[keras]'``
works only from a package index, ``.env.example`` and ``docs/`` exist only in a checkout,
so the words depend on where the running package came from:

* a **checkout** (running from the source tree: an editable install, or the tree on
  ``PYTHONPATH``): ``pip install -e '.[keras]'``, ``docs/troubleshooting.md``;
* a **folder** install (``pip install ./afs-callbacks``, pip's ``direct_url.json`` names the
  folder): ``pip install '/path/afs-callbacks[keras]'``;
* an **archive** (a wheel or sdist file, ``direct_url.json`` names it): the extra's own
  requirements, read from the installed metadata: ``pip install 'keras>=3.0'``;
* an **index** (no ``direct_url.json``): ``pip install 'afs-callbacks[keras]'``.

The wheel carries the docs and ``.env.example`` as data files, installed under
``<prefix>/share/doc/afs-callbacks/`` (where they are is read from the install's RECORD), so
every install has a page to point at.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: The distribution's name on an index and in its metadata.
DISTRIBUTION = "afs-callbacks"
#: Where a wheel's data files put the docs, under the install prefix.
DOC_DIR = "share/doc/afs-callbacks"
#: The package folder of the running code.
_PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Install:
    """Where the running package came from (see the module docstring).

    Attributes:
        kind: ``checkout``, ``folder``, ``archive`` or ``index``.
        source: the checkout's or folder's root, when known and present.
        docs: the folder holding the docs pages, when there is one.
        env_example: the ``.env.example`` file, when there is one.
        extras: each extra's requirements (``{"keras": ("keras>=3.0",)}``), from metadata.
    """

    kind: str
    source: Path | None = None
    docs: Path | None = None
    env_example: Path | None = None
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def current() -> Install:
    """How the running package was installed (read once)."""
    root = _PACKAGE.parent
    if _is_checkout(root):
        return Install("checkout", root, _present(root / "docs"), _present(root / ".env.example"))
    dist = _own_distribution()
    if dist is None:
        return Install("index")
    extras = _extras(dist)
    docs = _installed_docs(dist)
    env_example = _present(docs / ".env.example") if docs is not None else None
    direct = _direct_url(dist)
    if direct is None:
        return Install("index", None, docs, env_example, extras)
    where = _local_path(str(direct.get("url", "")))
    if "dir_info" in direct:
        source = _present(where) if where is not None else None
        if source is not None and _is_checkout(source):
            docs = docs or _present(source / "docs")
            env_example = env_example or _present(source / ".env.example")
        return Install("folder" if source is not None else "archive", source, docs, env_example, extras)
    return Install("archive", None, docs, env_example, extras)


def install_hint(extra: str) -> str:
    """The command that installs ``extra``'s packages for this install."""
    install = current()
    if install.kind == "checkout" and install.source is not None:
        return f"pip install -e '{_shown(install.source)}[{extra}]'"
    if install.kind == "folder" and install.source is not None:
        return f"pip install '{install.source}[{extra}]'"
    if install.kind == "archive":
        requirements = install.extras.get(extra)
        if requirements:
            return "pip install " + " ".join(f"'{requirement}'" for requirement in requirements)
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def docs_page(page: str) -> str:
    """Where to read ``page`` (``troubleshooting.md``, ``channels/slack.md``) here: a path
    relative to the working directory when it is inside, else an absolute one."""
    docs = current().docs
    if docs is not None:
        return _shown(docs / page)
    return f"docs/{page} in the afs-callbacks source"


def env_example() -> str | None:
    """The ``.env.example`` to copy (shown as :func:`docs_page` shows paths), if any."""
    path = current().env_example
    return _shown(path) if path is not None else None


# Reading the install -------------------------------------------------------------------


def _is_checkout(root: Path) -> bool:
    project = root / "pyproject.toml"
    try:
        text = project.read_text(encoding="utf-8")
    except OSError:
        return False
    return (root / "afs_callbacks").is_dir() and re.search(
        rf'(?m)^name\s*=\s*"{DISTRIBUTION}"', text
    ) is not None


def _own_distribution() -> metadata.Distribution | None:
    """The installed distribution whose files are the running package (not another copy)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    try:
        located = Path(str(dist.locate_file("afs_callbacks/__init__.py"))).resolve()
    except (OSError, TypeError):
        return None
    return dist if located.parent == _PACKAGE else None


def _extras(dist: metadata.Distribution) -> dict[str, tuple[str, ...]]:
    extras: dict[str, list[str]] = {}
    for requirement in dist.requires or ():
        match = re.match(r"^\s*([^;]+?)\s*;\s*extra\s*==\s*[\"']([^\"']+)[\"']\s*$", requirement)
        if match and not match.group(1).startswith(DISTRIBUTION):
            extras.setdefault(match.group(2), []).append(match.group(1).replace(" ", ""))
    return {name: tuple(requirements) for name, requirements in extras.items()}


def _installed_docs(dist: metadata.Distribution) -> Path | None:
    for file in dist.files or ():
        if file.as_posix().endswith(f"{DOC_DIR}/troubleshooting.md"):
            return _present(Path(str(dist.locate_file(file))).resolve().parent)
    return None


def _direct_url(dist: metadata.Distribution) -> dict[str, object] | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def _present(path: Path) -> Path | None:
    return path if path.exists() else None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (``docs/cli.md``, ``.``)."""
    try:
        relative = path.resolve().relative_to(Path(os.getcwd()).resolve())
    except (ValueError, OSError):
        return str(path)
    return relative.as_posix() if str(relative) != "." else "."
