"""The shape of the code: mitmproxy only in the addon modules and launcher; classes <= 300 lines, functions <= 60."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"
# The mitmproxy adapters (addon script, hooks, flow adapters, the start-up summary that parses mitmproxy's
# mode specs) and the launcher.
MITMPROXY_MODULES = {"addon.py", "hooks.py", "flows.py", "startup.py", "cli.py"}
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(EXPORTER.rglob("*.py"))


def _imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(EXPORTER)))
def test_only_the_addon_modules_import_mitmproxy(path: Path) -> None:
    imports = _imports(ast.parse(path.read_text()))
    if path.relative_to(EXPORTER).as_posix() not in MITMPROXY_MODULES:
        assert "mitmproxy" not in imports, f"{path.name} imports mitmproxy: keep it pure, use exporter.flows"


def test_the_boundary_check_sees_an_import() -> None:
    assert "mitmproxy" in _imports(ast.parse("from mitmproxy import http"))
    assert "mitmproxy" in _imports(ast.parse("def f():\n    import mitmproxy.ctx\n"))


def _evaluated(tree: ast.AST) -> list[int]:
    """Lines that call eval, exec or compile (by name or as builtins.<name>)."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    names = {"eval", "exec", "compile"}
    return [
        c.lineno
        for c in calls
        if (isinstance(c.func, ast.Name) and c.func.id in names)
        or (
            isinstance(c.func, ast.Attribute)
            and c.func.attr in names
            and isinstance(c.func.value, ast.Name)
            and c.func.value.id == "builtins"
        )
    ]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(EXPORTER)))
def test_nothing_is_evaluated_but_quick_inits_own_field_names(path: Path) -> None:
    """Network data must never reach eval/exec: the one exec compiles an __init__ from a dataclass's own field
    names at import time (exporter/values.py)."""
    lines = _evaluated(ast.parse(path.read_text()))
    if path.relative_to(EXPORTER).as_posix() == "values.py":
        assert len(set(lines)) == 1, lines  # exec(compile(...)): one line
    else:
        assert lines == [], f"{path.name} evaluates code at lines {lines}"


def test_the_evaluation_check_sees_a_call() -> None:
    assert _evaluated(ast.parse("exec(x)\nbuiltins.eval(y)\nre.compile(z)")) == [1, 2]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(EXPORTER)))
def test_no_class_over_300_lines_and_no_function_over_60(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
            continue
        lines = node.end_lineno - node.lineno + 1
        if isinstance(node, ast.ClassDef):
            assert lines <= MAX_CLASS_LINES, f"{path.name}: class {node.name} has {lines} lines"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert lines <= MAX_FUNCTION_LINES, f"{path.name}: {node.name}() has {lines} lines"
