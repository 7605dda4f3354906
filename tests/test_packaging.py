"""Packaging: a light import, the public (seed) API, and lint + types as part of the tests.

The lint/type checks are the tests named ``test_lint_*``; run them alone with
``pytest tests/test_packaging.py -k lint``.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import afs_callbacks
from afs_callbacks import NotificationEvent, NotificationHandler
from afs_callbacks.channels import REGISTRY, channel_variables, load_channel_class
from afs_callbacks.channels.variables import CORE_VARIABLES, known_variables

REPO = Path(__file__).resolve().parent.parent

HEAVY = (
    "torch",
    "transformers",
    "keras",
    "tensorflow",
    "pynvml",
    "lightning",
    "pytorch_lightning",
    "requests",
)


def test_import_loads_no_ml_framework_no_gpu_library_and_no_http_client() -> None:
    code = "import json, sys; import afs_callbacks; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    loaded = set(json.loads(output.stdout))
    assert "afs_callbacks" in loaded
    assert sorted(name for name in loaded if name.split(".")[0] in HEAVY) == []


@pytest.mark.parametrize("name", sorted(afs_callbacks.__all__))
def test_every_public_name_exists(name: str) -> None:
    # Channel classes and `watch` load on first access: this imports each of them.
    assert getattr(afs_callbacks, name) is not None


@pytest.mark.parametrize(
    "name",
    ["NotificationManager", "NotificationEvent", "NotificationHandler", "NotificationLevel", "EventType"],
)
def test_seed_names_are_public(name: str) -> None:
    assert name in afs_callbacks.__all__ and hasattr(afs_callbacks, name)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        afs_callbacks.Nope  # noqa: B018


def test_notification_handler_is_abstract_with_the_seed_methods() -> None:
    with pytest.raises(TypeError):
        NotificationHandler()  # type: ignore[abstract]

    class Minimal(NotificationHandler):
        def send(self, event: NotificationEvent) -> bool:
            return True

    handler = Minimal()
    assert handler.is_configured() is True
    assert handler.check().outcome.value == "permanent"  # no probe by default
    assert Minimal.from_env(None) is None  # type: ignore[arg-type]


def test_version_matches_the_distribution_and_the_package_is_typed() -> None:
    # No tomllib: the package supports Python 3.10.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "afs-callbacks"$', pyproject, re.M)
    assert re.search(rf'^version = "{re.escape(afs_callbacks.__version__)}"$', pyproject, re.M)
    assert (REPO / "afs_callbacks" / "py.typed").exists()


def test_the_license_is_an_spdx_string() -> None:
    # A TOML table is deprecated by setuptools (three warnings per build).
    assert re.search(r'^license = "MIT"$', (REPO / "pyproject.toml").read_text(), re.M)


# One channel registry ------------------------------------------------------------------


def test_public_channel_classes_come_from_the_registry() -> None:
    for spec in REGISTRY.values():
        assert spec.class_name in afs_callbacks.__all__
        assert getattr(afs_callbacks, spec.class_name) is load_channel_class(spec.name)


def test_the_type_checking_imports_list_every_registered_channel() -> None:
    # Static types cannot come from the registry at run time: this keeps the two in step.
    tree = ast.parse((REPO / "afs_callbacks" / "__init__.py").read_text())
    guarded = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imported = {
        (node.module, alias.name)
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {(spec.module, spec.class_name) for spec in REGISTRY.values()} <= imported


def test_the_test_environment_clears_every_channel_variable() -> None:
    prefixes = tuple(runpy.run_path(str(REPO / "conftest.py"))["_CHANNEL_PREFIXES"])

    for name in [*channel_variables(), *CORE_VARIABLES]:
        assert name.startswith(prefixes), name


def test_env_example_documents_every_channel_and_core_variable_in_the_order_users_meet_them() -> None:
    text = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", text, re.M))
    routing = {name for spec in REGISTRY.values() for name in spec.routing_variables}
    wanted = {*channel_variables(), *CORE_VARIABLES} - routing
    assert sorted(wanted - documented) == []
    assert (
        sorted(documented - set(known_variables()) - {"COST_ALERT_THRESHOLD_1", "COST_ALERT_THRESHOLD_2"})
        == []
    )
    sections = re.findall(r"^# ([A-Z][A-Za-z ]+?) \(docs/channels/", text, re.M)
    assert sections[:4] == ["Desktop", "Email", "Slack", "Discord"]


# Lint and types ------------------------------------------------------------------------
# Part of the test suite, as CI runs it. A file another engineer is still writing can fail
# these for a while; the message lists what to fix.

LINTED = [
    path
    for path in ("afs_callbacks", "tests", "integrations", "examples", "benchmarks")
    if (REPO / path).exists()
]


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=REPO)


def test_lint_ruff_check() -> None:
    result = run_tool("ruff", "check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_ruff_format() -> None:
    result = run_tool("ruff", "format", "--check", *LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_mypy_strict() -> None:
    result = run_tool("mypy")  # files and strictness come from pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
