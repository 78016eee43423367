"""The package's shape, enforced: pure cores import no pyinfra, one settings error type, one
parser per unit, no import side effects, no oversized module without a stated reason."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[2] / "tasks"
LONG_MODULE_LINES = 400  # above this a module says why at its top
LONG_REASON = "Long because"


def _modules(folder: str) -> list[str]:
    return sorted(f"tasks.{folder}.{p.stem}" for p in (TASKS / folder).glob("*.py") if p.stem != "__init__")


def _tree_files(with_lab: bool = False) -> list[Path]:
    return sorted(p for p in TASKS.rglob("*.py")
                  if "recipes" not in p.parts and (with_lab or "lab" not in p.relative_to(TASKS).parts))


def test_pure_cores_import_no_pyinfra():
    modules = _modules("core")
    assert modules, "tasks/core is empty"
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'pyinfra' or m.startswith(('pyinfra.', 'gevent'))\n"
        "             or m.startswith(('tasks.settings', 'tasks.facts', 'tasks.operations', 'tasks.checks')))\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=TASKS.parent)
    assert out.stdout.strip() == "", f"tasks/core pulls in: {out.stdout.strip()}"


def test_importing_tasks_has_no_side_effects():
    # The side effect that was there: patching gevent's hub so refusals print as one line. It
    # is now an explicit call each deploy makes; importing any module must leave the hub alone.
    modules = [m for folder in ("core", "settings", "facts", "checks", "operations") for m in _modules(folder)]
    code = ("import importlib, gevent\n"
            "before = gevent.get_hub().NOT_ERROR\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(gevent.get_hub().NOT_ERROR == before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=TASKS.parent)
    assert out.stdout.strip() == "True", "importing tasks patched gevent's hub"


def _classes_and_functions() -> list[tuple[Path, str, str]]:
    found = []
    for path in _tree_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found.append((path, "class", node.name))
            elif isinstance(node, ast.FunctionDef) and node.col_offset == 0:
                found.append((path, "def", node.name))
    return found


def test_one_settings_error_type():
    errors = [(p.relative_to(TASKS).as_posix(), n) for p, kind, n in _classes_and_functions()
              if kind == "class" and n.endswith("SettingsError")]
    assert errors == [("settings/errors.py", "SettingsError")]


@pytest.mark.parametrize("name", ["parse_size", "parse_duration"])
def test_one_parser_per_unit(name):
    places = [p.relative_to(TASKS).as_posix() for p, kind, n in _classes_and_functions()
              if kind == "def" and n == name]
    assert len(places) == 1, places


def test_long_modules_say_why():
    long = []
    for path in _tree_files(with_lab=True):
        lines = path.read_text().splitlines()
        docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if len(lines) > LONG_MODULE_LINES and LONG_REASON not in docstring:
            long.append(f"{path.relative_to(TASKS)} ({len(lines)} lines)")
    assert not long, f"over {LONG_MODULE_LINES} lines without '{LONG_REASON} ...' in the docstring: {long}"
