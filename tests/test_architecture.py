"""The layering STYLE.md describes, enforced: who may import litestar and sqlalchemy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parents[1] / "broker"
MODULES = sorted(BROKER.rglob("*.py"))


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _name(path: Path) -> str:
    return path.relative_to(BROKER).as_posix()


def _may_import_litestar(name: str) -> bool:
    return name == "app.py" or name.startswith("http/") or name.endswith("/routes.py")


def _may_import_sqlalchemy(name: str) -> bool:
    forbidden = name.endswith(("/routes.py", "/schemas.py")) or name.startswith("crypto/")
    forbidden |= name in {"errors.py", "settings.py", "scopes.py"}
    return not forbidden and (not name.startswith("http/") or name in {"http/errors.py", "http/deps.py"})


def test_the_tree_is_scanned():
    assert len(MODULES) > 30


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_litestar_only_in_app_http_and_routes(path):
    if "litestar" in _imports(path):
        assert _may_import_litestar(_name(path)), f"{_name(path)} imports litestar"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_sqlalchemy_never_in_routes_schemas_or_crypto(path):
    if "sqlalchemy" in _imports(path):
        assert _may_import_sqlalchemy(_name(path)), f"{_name(path)} imports sqlalchemy"


def test_errors_and_settings_are_framework_free():
    for name in ("errors.py", "settings.py", "scopes.py"):
        assert not {"litestar", "sqlalchemy"} & _imports(BROKER / name)
